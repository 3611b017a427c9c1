"""configs/sweeps/seed-study.yaml: every run of the study half computes what its configs/study file computes, the
dytune half what configs/study/dytune-recipe.yaml's training settings do, and each DyT run has its twin."""

from __future__ import annotations

import json

import pytest
import yaml
from study_helpers import REPO, STUDY

from dytune.commands.train import resolve_dry_run
from dytune.experiments.runs import is_dyt_only

SWEEP = REPO / "configs" / "sweeps" / "seed-study.yaml"
# settings that change no number of a run (the sweep takes them from its base)
NO_NUMBERS = {"output_dir", "logging_dir", "run_name", "resume", "logging_steps", "dataloader_num_workers",
              "save_total_limit", "per_device_eval_batch_size"}
STUDY_RUNS = {  # (model, data name, norm) -> configs/study file
    ("distilgpt2", "alpaca-study", "dyt"): "distilgpt2-lora-alpaca",
    ("distilgpt2", "alpaca-study", "layernorm"): "distilgpt2-lora-alpaca-layernorm",
    ("distilgpt2", "sharegpt-study", "dyt"): "distilgpt2-lora-sharegpt",
    ("distilgpt2", "sharegpt-study", "layernorm"): "distilgpt2-lora-sharegpt-layernorm",
    ("distilgpt2", "rewild-study", "dyt"): "distilgpt2-lora-rewild",
    ("distilgpt2", "rewild-study", "layernorm"): "distilgpt2-lora-rewild-layernorm",
    ("distilgpt2", "rewild-study-512", "layernorm"): "distilgpt2-lora-rewild-layernorm-512",
    ("pythia-14m", "rewild-study-trl", "dyt"): "pythia-14m-full-rewild",
    ("pythia-14m", "rewild-study-trl", "layernorm"): "pythia-14m-full-rewild-layernorm",
    ("pythia-410m", "rewild-study-trl", "dyt"): "pythia-410m-full-rewild",
    ("pythia-410m", "rewild-study-trl", "layernorm"): "pythia-410m-full-rewild-layernorm",
}


def effective(resolved: dict) -> dict:
    """The settings that change what a run computes."""
    out = {k: v for k, v in resolved.items() if k not in NO_NUMBERS}
    if not resolved["load_best_model_at_end"]:  # then eval/save cadence only changes what is measured and kept
        for key in ("eval_steps", "save_steps", "metric_for_best_model", "greater_is_better"):
            out.pop(key, None)
    if resolved["mode"] == "full":  # no adapters
        out = {k: v for k, v in out.items() if not k.startswith("lora_")}
    return out


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory):
    from dytune.experiments.grid import load_grid
    from dytune.experiments.sweep import twin_of, write_configs

    out = tmp_path_factory.mktemp("seed-study")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        grid = load_grid(SWEEP, output_dir=out)
    paths = write_configs(grid)
    runs = {}
    for run in grid.runs:
        resolved, _ = resolve_dry_run(str(paths[run.name]), [])
        twin = twin_of(run, grid.runs) if run.norm == "dyt" else None
        runs[run.name] = {"run": run, "resolved": resolved, "twin": twin.name if twin else None}
    return runs


def test_the_sweep_runs_every_study_setup_as_its_config(sweep_runs):
    found = {}
    for entry in sweep_runs.values():
        run = entry["run"]
        key = (run.params["model"], run.params["data"], run.norm)
        if key in STUDY_RUNS:
            found[key] = entry
    assert set(found) == set(STUDY_RUNS)
    for key, entry in found.items():
        expected, _ = resolve_dry_run(str(STUDY / f"{STUDY_RUNS[key]}.yaml"), [])
        assert effective(entry["resolved"]) == effective(expected), STUDY_RUNS[key]


def test_the_dytune_half_trains_as_dytune_recipe_yaml(sweep_runs):
    recipe = yaml.safe_load((STUDY / "dytune-recipe.yaml").read_text())
    training = {k: v for k, v in recipe.items() if k not in {"model", "data", "output_dir"} | NO_NUMBERS}
    data_keys = {"val_fraction", "max_length", "chat_template", "train_on", "mask_eos"}
    reference, _ = resolve_dry_run(str(STUDY / "dytune-recipe.yaml"), [])
    dytune = [e for e in sweep_runs.values() if e["run"].params["data"] in ("alpaca", "sharegpt", "rewild")]
    assert len(dytune) == 10
    for entry in dytune:
        resolved, run = entry["resolved"], entry["run"]
        full = run.params["model"].startswith("pythia")
        expected = dict(training, norm=run.norm, **({"mode": "full", "learning_rate": 2e-5} if full else {}))
        if run.norm == "layernorm":  # the twin: its LayerNorms train where DyT would
            expected = {k: v for k, v in expected.items() if k not in ("alpha_init", "keep_affine",
                                                                      "alpha_lr_multiplier", "calibration_refit")}
        counted = effective(resolved)  # (eval/save cadence included only where a best checkpoint is loaded)
        assert {k: counted[k] for k in expected if k in counted} == \
            {k: v for k, v in expected.items() if k in counted}, run.name
        assert {k for k in set(expected) - set(counted) if not k.startswith("lora_")} <= {"eval_steps", "save_steps"}
        assert {k: resolved["data"][k] for k in data_keys} == {k: reference["data"][k] for k in data_keys}
        assert resolved["lora_target_modules"] is None  # dytune's default targets: every linear layer


def test_every_dyt_run_has_its_layernorm_twin(sweep_runs):
    dyt = [e for e in sweep_runs.values() if e["run"].norm == "dyt"]
    assert len(dyt) == 10 and all(e["twin"] for e in dyt)
    for entry in dyt:
        twin = sweep_runs[entry["twin"]]["resolved"]
        differ = {k for k in set(entry["resolved"]) | set(twin)
                  if json.dumps(entry["resolved"].get(k), default=str) != json.dumps(twin.get(k), default=str)}
        # only the run's paths and settings that mean something for DyT alone (the conversion's among them)
        assert all(k in ("output_dir", "logging_dir") or is_dyt_only(k) or k.startswith(("calibration", "refit"))
                   or k == "sink_weight" for k in differ), differ
        assert "norm" in differ
    assert max(len(e["run"].name) for e in sweep_runs.values()) < 200  # run directories stay valid file names
