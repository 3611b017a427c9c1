"""The FakeLN recipe inside `dytune train`: fixed-scale sites, removal in FakeLN order, the uniform-scale loss;
and a bf16 run keeps its frozen teacher in bf16."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import dytune
from dytune.dyt import DyT
from dytune.errors import DytuneError
from dytune.train import TrainConfig, train


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_fakeln_run_with_gates_and_uniform_scale_loss_saves_a_norm_free_fixed_scale_model(quick, tmp_path):
    out = tmp_path / "fakeln"
    summary = train(quick(mode="full", form="fakeln", alpha_init="calibrated", calibration_refit="none",
                          distill=True, removal_order="fakeln", removal_groups=2, removal_ramp_steps=2,
                          removal_hold_steps=1, max_steps=10, uniform_scale_weight=0.1, output_dir=str(out)))
    steps = [m for m in _metrics(out) if "loss" in m]
    assert all(m["uniform_scale"] > 0 for m in steps)  # random tiny model: token scales differ
    assert steps[-1]["removal_gate"] == 0.0
    model = dytune.load(summary["final"])
    sites = [m for m in model.modules() if isinstance(m, DyT)]
    assert sites and all(m.form == "linear" for m in sites)
    assert not any("norm" in type(m).__name__.lower() for m in model.modules())
    card = (Path(summary["final"]) / "README.md").read_text()
    assert "FakeLN" in card and "tanh(alpha" not in card


def test_uniform_scale_weight_changes_the_loss_only_when_set(quick, tmp_path):
    plain = train(quick(mode="full", max_steps=2, eval_strategy="no", output_dir=str(tmp_path / "a")))
    aux = train(quick(mode="full", max_steps=2, eval_strategy="no", uniform_scale_weight=1.0,
                      output_dir=str(tmp_path / "b")))
    first_plain = [m for m in _metrics(tmp_path / "a") if "loss" in m][0]
    first_aux = [m for m in _metrics(tmp_path / "b") if "loss" in m][0]
    assert "uniform_scale" not in first_plain
    assert first_aux["loss"] == pytest.approx(first_plain["loss"] + first_aux["uniform_scale"], rel=1e-4)
    assert plain["status"] == aux["status"] == "completed"


def test_uniform_scale_settings_are_checked(tmp_path):
    with pytest.raises(DytuneError, match="uniform_scale_weight must be >= 0"):
        TrainConfig(uniform_scale_weight=-1, output_dir=str(tmp_path))


def test_bf16_run_keeps_the_frozen_teacher_in_bf16(quick, tmp_path, monkeypatch):
    from dytune.train import run as run_module

    seen = {}
    original_setup = run_module.TrainRecipe._setup_trainer

    def spy(self, checkpoint):  # noqa: ANN001
        original_setup(self, checkpoint)
        seen["teacher"] = {p.dtype for p in self.teacher.model.parameters()}
        seen["student_dyt"] = {p.dtype for m in self.model.modules() if isinstance(m, DyT) for p in m.parameters()}

    monkeypatch.setattr(run_module.TrainRecipe, "_setup_trainer", spy)
    summary = train(quick(mode="full", distill=True, bf16=True, max_steps=2, eval_strategy="no",
                          output_dir=str(tmp_path / "bf16")))
    assert summary["status"] == "completed"
    assert seen["teacher"] == {torch.bfloat16}
    assert seen["student_dyt"] == {torch.float32}
