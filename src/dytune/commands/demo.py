"""`dytune demo [--fast] [--out runs/demo]`: SmolLM2-135M -> DyT -> recovery -> comparison -> report, offline.

    dytune demo               # about 13 minutes on 2 idle AMX CPU cores, 25 without AMX
    dytune demo --fast        # about 3 minutes (what CI runs)
"""

from __future__ import annotations


def add_parser(subparsers, name: str) -> None:
    from dytune.experiments.demo import DemoSettings

    full, fast = DemoSettings.full(), DemoSettings.fast_mode()
    p = subparsers.add_parser(
        name, help="the whole story on the embedded SmolLM2-135M, offline: convert, recover, compare, report",
        description="Convert the embedded SmolLM2-135M to DyT (alpha calibrated on real ShareGPT conversations), "
                    "recover it by distillation from the original, measure the held-out cross-entropy of the "
                    "original, the converted and the recovered model on conversations never used for calibration "
                    "or training, answer a few MT-bench questions with each, and write a report. Needs only the "
                    "offline wheels of scripts/setup.sh. Exits 1 if recovery brought no gain.",
    )
    p.add_argument("--fast", action="store_true", help="smaller everything: a few minutes (CI)")
    p.add_argument("--out", default="runs/demo",
                   help="output directory (its demo sub-folders are replaced; default: runs/demo)")
    p.add_argument("--recipe", default=None,
                   help="training recipe, conversion included (default: recover, what `dytune train` does; "
                        "original-study, linear-refit, dytune, ...: dytune/recipes)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"recovery training steps (default: {full.steps}, --fast {fast.steps})")
    p.add_argument("--questions", type=int, default=None,
                   help=f"MT-bench questions answered (default: {full.questions}, --fast {fast.questions})")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys
    import time

    from dytune.experiments.demo import DemoSettings, RecoveryFailed, run_demo

    overrides = {k: v for k, v in (("steps", args.steps), ("questions", args.questions), ("threads", args.threads),
                                   ("recipe", args.recipe)) if v is not None}
    settings = DemoSettings.fast_mode(**overrides) if args.fast else DemoSettings.full(**overrides)
    start = time.time()
    try:
        result = run_demo(settings, args.out)
    except RecoveryFailed as err:
        print(f"\ndytune demo FAILED: {err}", file=sys.stderr)
        return 1
    print(f"\ndytune demo finished in {time.time() - start:.0f} s")
    print(f"report: {result.report} (and {result.report.with_suffix('.html')})")
    print(result.headline())
    return 0
