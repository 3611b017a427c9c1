"""Run a sweep: every run of a grid, one after another, each a normal `dytune train` run, then the extra steps.

    dytune sweep configs/sweeps/cpu-smollm2.yaml                   # in this process, one run after another
    dytune sweep GRID.yaml --launcher "accelerate launch --num_processes 8"   # each run: LAUNCHER -m dytune.cli train CFG

Layout of the sweep directory:

    configs/<run>.yaml     the `dytune train` config of each run (runnable by hand)
    logs/<run>.log         a launched run's output
    <run>/                 the run directory (TrainConfig.output_dir) + sweep_run.json, eval.json, answers.jsonl,
                           judge.json (DyT runs, against the LayerNorm twin), bench.json, error.txt
    sweep_summary.json     every run's status, the failures with their error; rewritten after each run
    report/                `dytune report` of the finished runs

A run whose directory holds `summary.json` is finished and skipped (a sweep survives interruption; an
interrupted run resumes from its latest checkpoint: every config sets `resume: true`). A failed run is
recorded and the sweep goes on; the command exits non-zero if any run failed.
"""

from __future__ import annotations

import gc
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import fields
from pathlib import Path

from dytune._jsonio import read_json, write_json
from dytune.errors import DytuneError
from dytune.experiments.grid import Grid, RunSpec
from dytune.experiments.runs import find_twin


def _log(message: str) -> None:
    print(f"dytune sweep: {message}", file=sys.stderr, flush=True)


def write_configs(grid: Grid) -> dict[str, Path]:
    """One `dytune train` YAML per run under `<sweep>/configs/`."""
    import yaml

    folder = grid.output_dir / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for run in grid.runs:
        path = folder / f"{run.name}.yaml"
        config = {**run.config, "resume": True}
        text = (f"# run {run.name} of sweep {grid.name}: `dytune train {path}`\n"
                + yaml.safe_dump(config, sort_keys=False, default_flow_style=None))
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        paths[run.name] = path
    return paths


def train_function():
    """`dytune.train(config)`: the training entry point of `dytune.train`."""
    import importlib

    try:
        module = importlib.import_module("dytune.train")
    except ImportError as err:
        raise DytuneError(f"dytune's training package cannot be imported ({err})") from err
    fn = getattr(module, "train", None)
    if not callable(fn):
        raise DytuneError("dytune.train has no train(config) function in this installation")
    return fn


def load_train_config(path: Path):
    from dytune.train.config import parse_config

    return parse_config(path)


def launch_command(launcher: str | None, config: Path) -> list[str]:
    """`LAUNCHER -m dytune.cli train CONFIG` ({config} in LAUNCHER is replaced instead); no launcher: this
    Python."""
    if not launcher:
        return [sys.executable, "-m", "dytune.cli", "train", str(config)]
    if "{config}" in launcher:
        return shlex.split(launcher.replace("{config}", shlex.quote(str(config))))
    return [*shlex.split(launcher), "-m", "dytune.cli", "train", str(config)]


def _run_subprocess(command: list[str], log: Path) -> None:
    """Run, copying the output to the terminal and to `log`; a non-zero exit raises with the output's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        fh.write(f"\n$ {shlex.join(command)}\n".encode())
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        tail = b""
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096):
                fh.write(chunk)
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
                tail = (tail + chunk)[-4000:]
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
        code = proc.wait()
    if code != 0:
        lines = [ln for ln in tail.decode(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
        raise DytuneError(f"`{shlex.join(command)}` exited with {code}: " + (lines[-1] if lines else "no output")
                          + f" (full output: {log})")


class _Sweep:
    def __init__(self, grid: Grid, *, launcher: str | None, use_subprocess: bool, force: bool) -> None:
        self.grid = grid
        self.launcher = launcher if launcher is not None else grid.launcher
        self.use_subprocess = use_subprocess or bool(self.launcher)
        self.force = force
        self.records: dict[str, dict] = {}
        self.summary_path = grid.output_dir / "sweep_summary.json"
        self.started = time.time()

    # bookkeeping ----------------------------------------------------------------------------------------------
    def record(self, run: RunSpec) -> dict:
        if run.name not in self.records:
            self.records[run.name] = {"name": run.name, "dir": str(self.run_dir(run)), "params": run.params,
                                      "fingerprint": run.fingerprint, "status": "pending", "steps": {},
                                      "error": None, "seconds": 0.0}
        return self.records[run.name]

    def run_dir(self, run: RunSpec) -> Path:
        return Path(run.config["output_dir"])

    def save_run(self, run: RunSpec) -> None:
        directory = self.run_dir(run)
        if directory.is_dir():
            write_json(directory / "sweep_run.json", {**self.record(run), "sweep": self.grid.name})

    def save_summary(self, state: str = "running") -> dict:
        runs = [self.record(r) for r in self.grid.runs]
        failed = [r for r in runs if r["status"] == "failed"]
        summary = {
            "sweep": self.grid.name, "source": str(self.grid.source) if self.grid.source else None,
            "output_dir": str(self.grid.output_dir), "state": state, "steps": self.grid.steps,
            "runs": runs, "counts": {s: sum(r["status"] == s for r in runs)
                                     for s in ("finished", "skipped", "failed", "pending")},
            "failed": [{"name": r["name"], "error": r["error"]} for r in failed],
            "seconds": round(time.time() - self.started, 1),
        }
        self.grid.output_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.summary_path, summary)
        return summary

    def fail(self, run: RunSpec, step: str, err: BaseException) -> None:
        rec = self.record(run)
        message = f"{type(err).__name__}: {err}" if not isinstance(err, DytuneError) else str(err)
        rec["status"] = "failed"
        rec["steps"][step] = "failed"
        rec["error"] = f"{step}: {message}"
        directory = self.run_dir(run)
        directory.mkdir(parents=True, exist_ok=True)
        detail = "".join(traceback.format_exception(err)) if not isinstance(err, DytuneError) else message + "\n"
        (directory / "error.txt").write_text(f"step {step} failed\n{detail}")
        self.save_run(run)
        _log(f"{run.name}: {step} FAILED: {message.splitlines()[0] if message else ''} (the sweep goes on)")

    # steps ------------------------------------------------------------------------------------------------------
    def train(self, run: RunSpec, config_path: Path) -> bool:
        """Train unless finished; True when the run has a finished training."""
        rec = self.record(run)
        directory = self.run_dir(run)
        done = (directory / "summary.json").is_file()
        previous = read_json(directory / "sweep_run.json") or {}
        status = (read_json(directory / "summary.json") or {}).get("status", "completed") if done else None
        if done and status != "completed" and not self.force:  # e.g. "stopped: non-finite": resuming repeats it
            error = (read_json(directory / "summary.json") or {}).get("error") or status
            self.fail(run, "train", DytuneError(f"the run ended {status!r}: {error} (change its settings, or pass "
                                                "--force to train it again)"))
            return False
        if done and previous.get("fingerprint") not in (None, run.fingerprint) and not self.force:
            self.fail(run, "train", DytuneError(
                f"{directory} holds a finished run of another config (fingerprint {previous.get('fingerprint')}, "
                f"now {run.fingerprint}): rename the sweep's output_dir, remove that directory, or pass --force"))
            return False
        if done and not self.force:
            rec["steps"]["train"] = "skipped"
            rec["status"] = "skipped"
            for step, state in (previous.get("steps") or {}).items():
                if step != "train" and state == "finished":
                    rec["steps"][step] = "finished"
            return True
        if done and self.force:
            import shutil

            shutil.rmtree(directory)
        (directory / "error.txt").unlink(missing_ok=True)
        rec["status"] = "running"
        self.save_summary()
        start = time.time()
        try:
            if self.use_subprocess:
                _run_subprocess(launch_command(self.launcher, config_path),
                                self.grid.output_dir / "logs" / f"{run.name}.log")
            else:
                train_function()(load_train_config(config_path))
        except KeyboardInterrupt:
            rec["status"] = "pending"
            raise
        except Exception as err:  # noqa: BLE001 - one failed run must not stop the sweep
            rec["seconds"] += time.time() - start
            self.fail(run, "train", err)
            return False
        finally:
            gc.collect()
        rec["seconds"] += time.time() - start
        if not (directory / "summary.json").is_file():
            self.fail(run, "train", DytuneError(f"training returned but wrote no {directory / 'summary.json'}"))
            return False
        rec["steps"]["train"] = "finished"
        rec["status"] = "finished"
        self.save_run(run)
        return True

    def step(self, run: RunSpec, name: str, fn, config_path: Path) -> None:
        rec = self.record(run)
        if rec["steps"].get(name) == "finished":
            return
        _log(f"{run.name}: {name}")
        start = time.time()
        try:
            fn(run, config_path, self.grid.step_settings.get(name) or {})
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001
            self.fail(run, name, err)
            return
        finally:
            gc.collect()
        rec["seconds"] += time.time() - start
        rec["steps"][name] = "finished"
        self.save_run(run)


def _final(run: RunSpec) -> str:
    path = Path(run.config["output_dir"]) / "final"
    if not path.is_dir():
        raise DytuneError(f"{path} not found: the run saved no final model")
    return str(path)


def step_eval(run: RunSpec, config_path: Path, settings: dict) -> None:
    """Validation loss / perplexity of the final model on the run's own validation split (`dytune eval`)."""
    from dytune.eval.perplexity import evaluate_models, markdown

    spec = load_train_config(config_path).data_spec()
    result = evaluate_models([_final(run)], spec, split=settings.get("split", "val"),
                             batch_size=int(settings.get("batch_size", 4)), device=settings.get("device"))
    directory = Path(run.config["output_dir"])
    write_json(directory / "eval.json", result)
    (directory / "eval.md").write_text(markdown(result))


def step_answers(run: RunSpec, config_path: Path, settings: dict) -> None:
    """MT-bench answers of the final model (`dytune answer`), resumable."""
    from dytune.eval.mtbench import GenerationSettings, answer_questions

    known = {f.name for f in fields(GenerationSettings)}
    gen = GenerationSettings(**{k: v for k, v in settings.items() if k in known})
    unknown = sorted(set(settings) - known - {"limit", "questions", "device"})
    if unknown:
        raise DytuneError(f"unknown answers setting(s) {unknown}: valid are limit, questions, device, {sorted(known)}")
    answer_questions(_final(run), Path(run.config["output_dir"]) / "answers.jsonl",
                     questions_path=settings.get("questions"), model_id=run.name, settings=gen,
                     device=settings.get("device"), limit=settings.get("limit"))


def step_bench(run: RunSpec, config_path: Path, settings: dict) -> None:
    """Prefill / decode throughput of the final model (`dytune bench`)."""
    from dytune.eval.speed import BenchSettings, markdown, run_bench

    known = {f.name for f in fields(BenchSettings)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise DytuneError(f"unknown bench setting(s) {unknown}: valid are {sorted(known)}")
    result = run_bench([_final(run)], settings=BenchSettings(**settings), norm_micro=False)
    directory = Path(run.config["output_dir"])
    write_json(directory / "bench.json", result)
    (directory / "bench.md").write_text(markdown(result))


def twin_of(run: RunSpec, runs: list[RunSpec]) -> RunSpec | None:
    """The LayerNorm run with the same settings but the DyT-only ones (`runs.find_twin`)."""
    by_name = {r.name: r for r in runs}
    twin = find_twin(run.config, {r.name: r.config for r in runs}, ignore={"output_dir"})
    return by_name.get(twin) if twin else None


def _judge_pairs(sweep: _Sweep) -> None:
    """Each DyT run's MT-bench answers against its LayerNorm twin's -> judge.json/.md/.png in the DyT run."""
    from dytune.eval.judge import judge_answers, make_judge

    settings = dict(sweep.grid.step_settings.get("judge") or {})
    judge = None
    for run in sweep.grid.runs:
        rec = sweep.record(run)
        if run.norm != "dyt" or rec["status"] == "failed" or rec["steps"].get("judge") == "finished":
            continue
        twin = twin_of(run, sweep.grid.runs)
        if twin is None:
            rec["steps"]["judge"] = "no LayerNorm twin"
            continue
        ours, theirs = (Path(r.config["output_dir"]) / "answers.jsonl" for r in (run, twin))
        if not ours.is_file() or not theirs.is_file():
            rec["steps"]["judge"] = "no answers"
            continue
        _log(f"{run.name}: judge against {twin.name}")
        try:
            if judge is None:
                judge = make_judge(settings.get("judge", "pairrm"), device=settings.get("device"),
                                   batch_size=int(settings.get("batch_size", 8)))
            judge_answers(ours, theirs, judge=judge, questions_path=(sweep.grid.step_settings.get("answers") or {})
                          .get("questions"), out_prefix=Path(run.config["output_dir"]) / "judge",
                          n_boot=int(settings.get("n_boot", 2000)), tie_margin=float(settings.get("tie_margin", 0.0)),
                          single_order=settings.get("single_order", False))
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001
            sweep.fail(run, "judge", err)
            continue
        rec["steps"]["judge"] = "finished"
        sweep.save_run(run)


def run_sweep(grid: Grid, *, launcher: str | None = None, use_subprocess: bool = False, force: bool = False,
              only: list[str] | None = None, report: bool = True) -> dict:
    """Run (or skip, when finished) every run of `grid`, then its extra steps; returns the sweep summary."""
    runs = grid.runs
    if only:
        wanted = set(only)
        missing = wanted - {r.name for r in runs}
        if missing:
            raise DytuneError(f"--only: no run named {sorted(missing)}; the runs are: {', '.join(r.name for r in runs)}")
    sweep = _Sweep(grid, launcher=launcher, use_subprocess=use_subprocess, force=force)
    configs = write_configs(grid)
    for run in runs:
        sweep.record(run)
    selected = [r for r in runs if not only or r.name in only]
    _log(f"{grid.name}: {len(selected)} run(s) into {grid.output_dir} (steps: {', '.join(grid.steps)})")
    steps = {"eval": step_eval, "answers": step_answers, "bench": step_bench}
    try:
        for i, run in enumerate(selected, 1):
            _log(f"[{i}/{len(selected)}] {run.name}")
            if not sweep.train(run, configs[run.name]):
                sweep.save_summary()
                continue
            if sweep.record(run)["steps"]["train"] == "skipped":
                _log(f"{run.name}: finished before, skipped")
            for name in grid.steps[1:]:
                if name in steps and sweep.record(run)["status"] != "failed":
                    sweep.step(run, name, steps[name], configs[run.name])
            sweep.save_run(run)
            sweep.save_summary()
        if "judge" in grid.steps:
            _judge_pairs(sweep)
    except KeyboardInterrupt:
        sweep.save_summary("interrupted")
        _log(f"interrupted; rerun the same command to continue (finished runs are skipped): {sweep.summary_path}")
        raise
    summary = sweep.save_summary("done")
    if report:
        from dytune.experiments.report import build_report
        from dytune.experiments.runs import load_run

        dirs = [Path(r.config["output_dir"]) for r in runs if Path(r.config["output_dir"]).is_dir()]
        if dirs:
            try:
                result = build_report(runs=[load_run(d) for d in dirs], out=grid.output_dir / "report",
                                      title=f"dytune sweep {grid.name}: LayerNorm vs DyT")
                summary["report"] = str(result["markdown"])
                write_json(sweep.summary_path, summary)
            except Exception as err:  # noqa: BLE001 - the runs are done; a report failure is reported
                _log(f"report failed: {type(err).__name__}: {err} (rerun `dytune report {grid.output_dir}`)")
    return summary


def summary_table(summary: dict) -> str:
    lines = ["| run | status | steps | seconds | error |", "|---|---|---|---:|---|"]
    for r in summary["runs"]:
        steps = ", ".join(f"{k}: {v}" for k, v in r["steps"].items())
        error = (r["error"] or "").splitlines()[0][:120] if r["error"] else ""
        lines.append(f"| {r['name']} | {r['status']} | {steps} | {r['seconds']:.0f} | {error} |")
    return "\n".join(lines)
