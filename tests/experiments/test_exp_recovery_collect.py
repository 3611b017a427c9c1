"""benchmarks/recovery.py --collect: an arm's result rebuilt from its run directory (side-by-side or killed runs)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recovery():
    spec = importlib.util.spec_from_file_location("recovery_benchmark", REPO / "benchmarks" / "recovery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(run, *, finished: bool, resumed: bool = False, summary_step: int = 8,
               status: str = "completed") -> None:
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "m", "learning_rate": 1e-5, "data": {"source": "x"}}))
    rows = []
    for step in range(0, 9):
        if step:
            rows.append({"step": step, "loss": 4.0, "tokens": 100 * step})
        if step % 4 == 0:
            rows.append({"step": step, "eval_loss": 3.5 - 0.1 * step, "num_input_tokens_seen": 100 * step})
    if resumed:  # a resumed run evaluates again at the checkpoint's step (same numbers, one more row)
        rows.insert(8, {"step": 4, "eval_loss": 3.1, "num_input_tokens_seen": 400})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (run / "summary.json").write_text(json.dumps({"status": status, "train_tokens": 100 * summary_step,
                                                      "global_step": summary_step, "skipped_steps": 0,
                                                      "tokens_per_second": 50.0, "local_distill": None}))


def test_collect_finished_run(recovery, tmp_path):
    _write_run(tmp_path / "arm", finished=True)
    arm = recovery.collect_arm(tmp_path / "arm", budget=800)
    assert [(p["step"], p["tokens"]) for p in arm["curve"]] == [(0, 0), (4, 400), (8, 800)]
    assert arm["curve"][-1]["ce"] == pytest.approx(2.7)
    assert arm["train_tokens"] == 800 and arm["steps"] == 8 and "partial" not in arm
    assert arm["settings"] == {"model": "m", "learning_rate": 1e-5}  # data paths left out, as run_arm does


def test_collect_killed_resumed_run_is_partial_and_deduplicated(recovery, tmp_path):
    _write_run(tmp_path / "arm", finished=False, resumed=True)
    arm = recovery.collect_arm(tmp_path / "arm", budget=500_000)
    assert [p["step"] for p in arm["curve"]] == [0, 4, 8]
    assert arm["train_tokens"] == 800 and arm["steps"] == 8
    assert arm["partial"] == "stopped at 800 of 500,000 training tokens (killed or not yet resumed)"


def test_collect_ignores_a_summary_that_is_not_this_runs_end(recovery, tmp_path):
    # an earlier end, then resumed further and killed: the metrics are the record, not the old summary
    _write_run(tmp_path / "stale", finished=True, summary_step=4)
    arm = recovery.collect_arm(tmp_path / "stale", budget=800)
    assert arm["steps"] == 8 and arm["train_tokens"] == 800 and arm["tokens_per_second"] is None
    assert arm["partial"] == "stopped at 800 of 800 training tokens (summary.json is from step 4: resumed since)"
    # stopped on a non-finite loss: partial, saying so
    _write_run(tmp_path / "nan", finished=True, status="stopped: non-finite loss")
    arm = recovery.collect_arm(tmp_path / "nan", budget=800)
    assert arm["partial"] == "stopped at 800 of 800 training tokens (stopped: non-finite loss)"


def test_collect_missing_run_says_which(recovery, tmp_path):
    with pytest.raises(FileNotFoundError, match="never ran"):
        recovery.collect_arm(tmp_path / "nope", budget=1)
