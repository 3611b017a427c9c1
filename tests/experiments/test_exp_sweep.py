"""`dytune sweep` bookkeeping with a stand-in trainer: skip finished runs, isolate failures, survive interruption,
launch runs as subprocesses, evaluate and report. (tests/experiments/test_exp_sweep_e2e.py trains for real.)"""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from dytune.cli import main
from dytune.experiments import sweep as sweep_mod
from dytune.experiments.grid import load_grid
from dytune.experiments.sweep import run_sweep

CONVS = [{"id": f"c{i}", "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}
         for i in range(12)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny model directories of different sizes."""
    from dytune.testing import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, layers in (("tiny-a", 1), ("tiny-b", 2)):
        model = tiny_model("llama", num_hidden_layers=layers)
        model.save_pretrained(root / name)
        tiny_tokenizer().save_pretrained(root / name)
        out[name] = root / name
    return out


class FakeTrain:
    """Writes what `dytune.train` leaves in a run directory; fails for a model named 'broken'."""

    def __init__(self, interrupt_at: str | None = None) -> None:
        self.calls: list[str] = []
        self.interrupt_at = interrupt_at

    def __call__(self, config) -> None:
        from pathlib import Path

        from dytune import convert, load_model, load_tokenizer, save

        name = Path(config.output_dir).name
        self.calls.append(name)
        if self.interrupt_at and self.interrupt_at in name:
            raise KeyboardInterrupt
        if "broken" in config.model:
            raise RuntimeError("the stand-in trainer cannot train 'broken'")
        run = Path(config.output_dir)
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(yaml.safe_dump(config.resolved()))
        size = 1 if "tiny-a" in config.model else 2
        offset = 0.2 / size if config.norm == "dyt" else 0.0
        with (run / "metrics.jsonl").open("w") as fh:
            for step in range(1, 11):
                rec = {"step": step, "epoch": step / 5, "loss": 5 / step + offset, "grad_norm": 1 + 1 / step,
                       "learning_rate": 1e-3, "tokens_per_second": 100.0}
                if config.norm == "dyt":
                    rec["alpha/model.layers.0.input_layernorm"] = 1 + step / 100
                fh.write(json.dumps(rec) + "\n")
                if step % 5 == 0:
                    fh.write(json.dumps({"step": step, "epoch": step / 5, "eval_loss": 4 / step + offset}) + "\n")
        model, tok = load_model(config.model), load_tokenizer(config.model)
        if config.norm == "dyt":
            convert(model, alpha_init="constant:1.0", progress=False)
        save(model, run / "final", tok)
        (run / "summary.json").write_text(json.dumps({"status": "completed", "final_eval": {"eval_loss": 0.8 + offset},
                                                      "tokens_per_second": 100.0, "global_step": 10}))


def write_grid(tmp_path, models, extra=None):
    data = tmp_path / "convs.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CONVS))
    spec = {"name": "t", "output_dir": str(tmp_path / "sweep"),
            "base": {"max_steps": 2, "data": {"source": str(data), "val_fraction": 0.25, "max_length": 64},
                     "report_to": "none"},
            "grid": [{"model": [str(models["tiny-a"]), str(models["tiny-b"])], "norm": ["layernorm", "dyt"]},
                     {"model": [str(models["tiny-a"].parent / "broken")], "norm": ["dyt"]}],
            **(extra or {})}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_sweep_skips_finished_isolates_failures_and_reports(tmp_path, models, monkeypatch, capsys):
    fake = FakeTrain()
    monkeypatch.setattr(sweep_mod, "train_function", lambda: fake)
    grid_file = write_grid(tmp_path, models, {"steps": ["eval"], "eval": {"batch_size": 2}})
    assert main(["sweep", str(grid_file)]) == 1  # one run failed
    out = capsys.readouterr().out
    assert "FAILED broken_dyt: train: RuntimeError: the stand-in trainer cannot train 'broken'" in out
    sweep_dir = tmp_path / "sweep"
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["counts"] == {"finished": 4, "skipped": 0, "failed": 1, "pending": 0}
    assert [f["name"] for f in summary["failed"]] == ["broken_dyt"]
    assert fake.calls == ["tiny-a_ln", "tiny-a_dyt", "tiny-b_ln", "tiny-b_dyt", "broken_dyt"]
    assert "RuntimeError" in (sweep_dir / "broken_dyt" / "error.txt").read_text()
    for name in ("tiny-a_ln", "tiny-b_dyt"):
        run = sweep_dir / name
        assert json.loads((run / "sweep_run.json").read_text())["steps"] == {"train": "finished", "eval": "finished"}
        ev = json.loads((run / "eval.json").read_text())
        assert ev["data"]["split"] == "val" and ev["data"]["conversations"] == 3
        assert yaml.safe_load((sweep_dir / "configs" / f"{name}.yaml").read_text())["resume"] is True
    report = sweep_dir / "report"
    for png in ("loss_convs.png", "perplexity.png", "grad_norm.png", "alpha.png", "learning_rate.png",
                "gap_vs_size.png"):
        assert (report / png).stat().st_size > 5000, png
    md = (report / "report.md").read_text()
    assert "`broken_dyt` (failed): train: RuntimeError" in md and "+0.1000" in md and "+0.2000" in md

    # rerun: finished runs are skipped, the failed one is retried (and fails again)
    fake.calls.clear()
    assert main(["sweep", str(grid_file), "--no-report"]) == 1
    assert fake.calls == ["broken_dyt"]
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["counts"]["skipped"] == 4 and summary["runs"][0]["steps"] == {"train": "skipped", "eval": "finished"}


def test_interrupted_sweep_continues(tmp_path, models, monkeypatch):
    grid = load_grid(write_grid(tmp_path, models))
    fake = FakeTrain(interrupt_at="tiny-b_ln")
    monkeypatch.setattr(sweep_mod, "train_function", lambda: fake)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, report=False)
    summary = json.loads((grid.output_dir / "sweep_summary.json").read_text())
    assert summary["state"] == "interrupted"
    assert [r["status"] for r in summary["runs"]] == ["finished", "finished", "pending", "pending", "pending"]
    fake = FakeTrain()
    monkeypatch.setattr(sweep_mod, "train_function", lambda: fake)
    summary = run_sweep(grid, report=False, only=["tiny-b_ln", "tiny-b_dyt", "tiny-a_ln"])
    assert fake.calls == ["tiny-b_ln", "tiny-b_dyt"]  # tiny-a_ln was finished
    assert summary["state"] == "done" and summary["counts"]["finished"] == 2


def test_changed_config_is_not_silently_skipped(tmp_path, models, monkeypatch):
    fake = FakeTrain()
    monkeypatch.setattr(sweep_mod, "train_function", lambda: fake)
    grid = load_grid(write_grid(tmp_path, models))
    run_sweep(grid, report=False, only=["tiny-a_ln"])
    spec = yaml.safe_load((tmp_path / "grid.yaml").read_text())
    spec["base"]["learning_rate"] = 0.5
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(spec))
    summary = run_sweep(load_grid(tmp_path / "grid.yaml"), report=False, only=["tiny-a_ln"])
    assert "holds a finished run of another config" in summary["failed"][0]["error"]
    summary = run_sweep(load_grid(tmp_path / "grid.yaml"), report=False, only=["tiny-a_ln"], force=True)
    assert summary["failed"] == [] and fake.calls == ["tiny-a_ln", "tiny-a_ln"]


def test_launcher_runs_each_config_as_a_subprocess(tmp_path, models):
    launcher = tmp_path / "launch.py"
    launcher.write_text(
        "import json, sys, yaml, pathlib\n"
        "assert sys.argv[1:4] == ['-m', 'dytune.cli', 'train'], sys.argv\n"
        "cfg = yaml.safe_load(open(sys.argv[4]))\n"
        "if 'broken' in cfg['model']:\n"
        "    print('boom: cannot load broken', file=sys.stderr); sys.exit(3)\n"
        "run = pathlib.Path(cfg['output_dir']); run.mkdir(parents=True, exist_ok=True)\n"
        "(run / 'config.yaml').write_text(yaml.safe_dump(cfg))\n"
        "(run / 'summary.json').write_text(json.dumps({'val_loss': 1.0}))\n"
        "print('launched', cfg['output_dir'])\n")
    grid = load_grid(write_grid(tmp_path, models))
    summary = run_sweep(grid, launcher=f"{sys.executable} {launcher}", report=False)
    assert summary["counts"]["finished"] == 4
    assert "exited with 3: boom: cannot load broken" in summary["failed"][0]["error"]
    log = (grid.output_dir / "logs" / "tiny-a_ln.log").read_text()
    assert "launched" in log and "-m dytune.cli train" in log


def test_dry_run_lists_runs(tmp_path, models, capsys):
    assert main(["sweep", str(write_grid(tmp_path, models)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "5 run(s)" in out and "tiny-b_dyt  [model=tiny-b, norm=dyt]" in out
    assert (tmp_path / "sweep" / "configs" / "broken_dyt.yaml").is_file()


class TurnCountingJudge:
    """A pairwise stand-in for PairRM (no download): prefers the longer answer, records what it was shown."""

    pairwise, name = True, "length"

    def __init__(self) -> None:
        self.sources: list[str] = []

    def compare(self, sources, cands1, cands2):
        self.sources += sources
        return [float(len(a) - len(b)) for a, b in zip(cands1, cands2)]


@pytest.mark.parametrize("single_order", [True, False])
def test_judge_step_passes_single_order_to_judge_answers(tmp_path, models, monkeypatch, single_order):
    """`judge: {single_order: true}` runs the study's PairRM protocol inside a sweep: turn 1 only, one verdict."""
    import dytune.eval.judge

    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "category": "writing",
                                             "turns": [f"Say {i}.", "Say it again."]}) + "\n" for i in (1, 2)))
    judge = TurnCountingJudge()
    monkeypatch.setattr(dytune.eval.judge, "make_judge", lambda *a, **k: judge)
    monkeypatch.setattr(sweep_mod, "train_function", lambda: FakeTrain())
    grid_file = write_grid(tmp_path, models, {
        "grid": {"model": [str(models["tiny-a"])], "norm": ["layernorm", "dyt"]}, "steps": ["answers", "judge"],
        "answers": {"questions": str(questions), "max_new_tokens": 2, "batch_size": 2},
        "judge": {"judge": "length", "n_boot": 10, "single_order": single_order}})
    summary = run_sweep(load_grid(grid_file), report=False)
    assert summary["failed"] == []
    result = json.loads((tmp_path / "sweep" / "tiny-a_dyt" / "judge.json").read_text())
    assert result["protocol"] == ("study-single-order" if single_order else "dytune")
    # both orders of each question's turn 1 (single order), or of both turns (dytune's protocol)
    assert len(judge.sources) == (2 * 2 if single_order else 2 * 2 * 2)
    assert result["summary"]["overall"]["n"] == (2 if single_order else 4)


def test_judge_settings_are_checked_when_the_sweep_is_read(tmp_path, models):
    from dytune.errors import DytuneError

    for judge, message in (({"single_order": "yes"}, "single_order must be true or false"),
                           ({"single-order": True}, r"unknown judge setting\(s\) \['single-order'\]")):
        grid_file = write_grid(tmp_path, models, {"steps": ["answers", "judge"], "judge": judge})
        with pytest.raises(DytuneError, match=message):
            load_grid(grid_file)
