"""`dytune sweep GRID.yaml`: every combination of a grid, each a normal `dytune train` run, then eval / answers /
judge / bench as the grid asks, then the report.

    dytune sweep configs/sweeps/cpu-smollm2.yaml
    dytune sweep configs/sweeps/pythia-scale.yaml --launcher "accelerate launch --num_processes 8"
    dytune sweep GRID.yaml --dry-run          # list the runs and write their configs, train nothing
"""

from __future__ import annotations

import argparse


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(
        name, help="run a grid of training runs (models x norm x data x modes x seeds x any key), then compare",
        description="Expand GRID.yaml (see configs/sweeps/) into runs and train them one after another, each "
                    "a normal `dytune train` run with its config in <out>/configs/. Finished runs (summary.json "
                    "present) are skipped, so rerunning the command continues an interrupted sweep; a failed run "
                    "is recorded in <out>/sweep_summary.json and the others go on. Exits 1 if any run failed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("grid", help="sweep file (YAML: base, datasets, grid, exclude, steps, ...)")
    p.add_argument("--out", default=None, help="sweep directory (default: the file's output_dir, else runs/<name>)")
    p.add_argument("--launcher", default=None,
                   help="run each training as a subprocess `LAUNCHER -m dytune.cli train CONFIG`, e.g. "
                        "\"accelerate launch --num_processes 8\" (write {config} to place the config yourself)")
    p.add_argument("--subprocess", action="store_true",
                   help="run each training in a fresh Python process (no launcher)")
    p.add_argument("--only", nargs="+", metavar="RUN", default=None, help="run only these runs (by name)")
    p.add_argument("--force", action="store_true", help="retrain finished runs too (their directories are replaced)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and write their configs; train nothing")
    p.add_argument("--no-report", action="store_true", help="do not write <out>/report at the end")
    p.set_defaults(func=run)


def run(args) -> int:
    from dytune.experiments.grid import load_grid
    from dytune.experiments.sweep import run_sweep, summary_table, write_configs

    grid = load_grid(args.grid, args.out)
    if args.dry_run:
        paths = write_configs(grid)
        print(f"{len(grid.runs)} run(s) in {grid.output_dir} (steps: {', '.join(grid.steps)}):")
        for r in grid.runs:
            params = ", ".join(f"{k}={v}" for k, v in r.params.items())
            print(f"  {r.name}  [{params}]  {paths[r.name]}")
        return 0
    summary = run_sweep(grid, launcher=args.launcher, use_subprocess=args.subprocess, force=args.force,
                        only=args.only, report=not args.no_report)
    print(summary_table(summary))
    counts = summary["counts"]
    print(f"\n{grid.output_dir}/sweep_summary.json: {counts['finished']} trained, {counts['skipped']} skipped "
          f"(finished before), {counts['failed']} failed" + (f"; report: {summary['report']}" if "report" in summary
                                                             else ""))
    for failure in summary["failed"]:
        print(f"FAILED {failure['name']}: {failure['error']}")
    return 1 if summary["failed"] else 0
