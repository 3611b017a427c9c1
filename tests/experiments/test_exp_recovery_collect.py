"""The recovery benchmark's machinery (dytune.experiments.recovery): an arm's result rebuilt from its run directory
(side-by-side, killed or resumed runs), the arms file, gaps against the twin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recovery():
    from dytune.experiments import recovery

    return recovery


def _write_run(run, *, finished: bool, resumed: bool = False, summary_step: int = 8,
               status: str = "completed", **config) -> None:
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "m", "learning_rate": 1e-5, "data": {"source": "x"},
                                                     **config}))
    rows = []
    for step in range(0, 9):
        if step:
            rows.append({"step": step, "loss": 4.0, "tokens": 100 * step})
        if step % 4 == 0:
            rows.append({"step": step, "eval_loss": 3.5 - 0.1 * step, "num_input_tokens_seen": 100 * step})
    if resumed:  # a resumed run evaluates again at the checkpoint's step (same numbers, one more row)
        rows.insert(8, {"step": 4, "eval_loss": 3.1, "num_input_tokens_seen": 400})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "lo')  # torn
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


def test_collect_marks_evaluations_with_norms_still_mixed_in(recovery, tmp_path):
    # gradual removal: eval_removal_gate where logged, else the gate the next training step logged
    run = tmp_path / "gated"
    run.mkdir()
    rows = [{"step": 0, "eval_loss": 2.0, "num_input_tokens_seen": 0},
            {"step": 1, "loss": 2.0, "tokens": 100, "removal_gate": 1.0},
            {"step": 2, "loss": 2.1, "tokens": 200, "removal_gate": 0.5},
            {"step": 2, "eval_loss": 2.3, "num_input_tokens_seen": 200},
            {"step": 3, "loss": 2.2, "tokens": 300, "removal_gate": 0.25},
            {"step": 4, "loss": 2.2, "tokens": 400, "removal_gate": 0.0},
            {"step": 4, "eval_loss": 2.5, "num_input_tokens_seen": 400, "eval_removal_gate": 0.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    arm = recovery.collect_arm(run, budget=400)
    assert [p.get("gate") for p in arm["curve"]] == [1.0, 0.25, None]  # step 0 ran at g = 1; step 4: pure DyT
    result = {"original_ce": 2.0, "data": {"heldout": 2}, "arms": {"gated": arm}}
    recovery.finish(result, tmp_path / "r.json", {"gated": {"norm": "dyt"}})
    assert "mean gate" not in recovery.table(result)  # its last evaluation is norm-free
    arm["curve"][-1]["gate"] = 0.3
    recovery.finish(result, tmp_path / "r.json", {"gated": {"norm": "dyt"}})
    assert "2.500 (mean gate 0.30: norms still mixed in)" in recovery.table(result)
    assert (tmp_path / "r.png").stat().st_size > 0


def test_collect_missing_run_says_which(recovery, tmp_path):
    with pytest.raises(FileNotFoundError, match="never ran"):
        recovery.collect_arm(tmp_path / "nope", budget=1)


def test_arms_file_every_arm_is_a_train_config_and_dyt_arms_have_their_twin(recovery):
    from dytune.train.config import valid_keys

    arms = recovery.load_arms(REPO / "configs" / "recovery" / "arms.yaml")
    keys = set(valid_keys())
    for name, arm in arms["arms"].items():
        assert set(arm) - keys <= set(recovery.ARM_KEYS), name
        if arm["norm"] == "dyt":
            assert arms["arms"][arm["twin"]]["norm"] == "layernorm", name
    assert set(arms["default"]) <= set(arms["arms"])


def test_finish_gaps_against_the_twin_at_the_same_step(recovery, tmp_path):
    result = {"original_ce": 2.0, "data": {"heldout": 3}, "arms": {
        "d": {"curve": [{"step": 0, "tokens": 0, "ce": 5.0}, {"step": 4, "tokens": 400, "ce": 3.0}]},
        "d-twin": {"curve": [{"step": 0, "tokens": 0, "ce": 2.0}, {"step": 4, "tokens": 400, "ce": 1.9}]}}}
    spec = {"d": {"norm": "dyt", "twin": "d-twin"}, "d-twin": {"norm": "layernorm"}}
    recovery.finish(result, tmp_path / "r.json", spec)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["arms"]["d"]["final"] == {"tokens": 400, "ce": 3.0, "gap": 1.0, "gap_vs_twin": pytest.approx(1.1)}
    assert saved["arms"]["d"]["start"] == {"tokens": 0, "ce": 5.0, "gap": 3.0}
    assert saved["arms"]["d-twin"]["final"]["gap_vs_twin"] is None


def test_an_arm_with_max_steps_runs_by_steps_not_by_a_token_budget(recovery, tmp_path):
    """A decay placed by the step count (`lr_decay_fraction`) needs `max_steps`: such an arm gets no token budget,
    and its values make a valid TrainConfig (which refuses a token budget with that decay)."""
    from dytune.train import TrainConfig

    data = {"paths": {"alpaca_train": "a.json", "sharegpt": "s.json", "heldout": "h.json"}}
    settings = {"model": "m", "work": str(tmp_path), "max_length": 512, "batch": 4, "grad_accum": 1,
                "eval_every": 25, "threads": 1, "tokens": 2_000_000, "local_steps": 0, "local_lr": 1e-3,
                "save_every": 40, "resume": False}
    arm = {"norm": "dyt", "source": "ours-linear", "mode": "full", "learning_rate": 8e-5, "twin": "t",
           "lr_scheduler_type": "warmup_stable_decay", "lr_decay_fraction": 0.3, "max_steps": 1740}
    values = recovery.arm_config("wsd", arm, {"report_to": "none"}, data, {"ours-linear": "dyt-dir"}, settings)
    assert values["max_steps"] == 1740 and values["max_train_tokens"] == 0
    assert TrainConfig(**values).max_steps == 1740
    budget = recovery.arm_config("plain", {k: v for k, v in arm.items() if k not in ("max_steps", "lr_decay_fraction",
                                                                                       "lr_scheduler_type")},
                                 {}, data, {"ours-linear": "dyt-dir"}, settings)
    assert budget["max_train_tokens"] == 2_000_000 and budget["max_steps"] == 10**6


def test_an_arm_run_by_steps_is_complete_at_its_last_step_not_at_the_token_budget(recovery, tmp_path):
    _write_run(tmp_path / "done", finished=True, max_steps=8)
    assert "partial" not in recovery.collect_arm(tmp_path / "done", budget=2_000_000)  # 800 tokens, all 8 steps
    _write_run(tmp_path / "short", finished=True, max_steps=16)
    assert recovery.collect_arm(tmp_path / "short", budget=800)["partial"] == "stopped at step 8 of 16"
