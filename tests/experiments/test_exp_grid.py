"""Sweep files: grid expansion over any key, recipes, shared LayerNorm twins, deterministic names, errors."""

from __future__ import annotations

import pytest
import yaml

from dytune.errors import DytuneError
from dytune.experiments.grid import expand_grid, load_grid
from dytune.train.recipes import load_recipe
from dytune.experiments.sweep import launch_command, twin_of


def names(grid):
    return [r.name for r in grid.runs]


def test_product_of_keys_with_dotted_and_named_datasets(tmp_path):
    spec = {"name": "s", "base": {"max_steps": 3, "data": {"max_samples": 10}},
            "datasets": {"alpaca": "/d/alpaca.json", "sg": {"source": "/d/sg.json", "clean": True}},
            "grid": {"model": ["EleutherAI/pythia-70m", "/models/tiny"], "norm": ["layernorm", "dyt"],
                     "data": ["alpaca", "sg"], "seed": [0, 1], "learning_rate": [1e-4, 3e-4],
                     "data.max_length": [64]}}
    grid = expand_grid(spec, tmp_path / "out")
    assert len(grid.runs) == 2 * 2 * 2 * 2 * 2
    assert len(set(names(grid))) == len(grid.runs)
    run = grid.runs[0]
    assert run.name == "pythia-70m_ln_alpaca_s0_lr0.0001_max_length64"
    assert run.config["data"] == {"max_samples": 10, "source": "/d/alpaca.json", "max_length": 64}
    assert run.config["output_dir"] == str(tmp_path / "out" / run.name)
    sg = next(r for r in grid.runs if r.params["data"] == "sg")
    assert sg.config["data"]["clean"] is True and sg.params["model"] == "pythia-70m"
    # deterministic: the same spec gives the same names and fingerprints
    again = expand_grid(spec, tmp_path / "out")
    assert [(r.name, r.fingerprint) for r in again.runs] == [(r.name, r.fingerprint) for r in grid.runs]


def test_dyt_only_keys_share_one_layernorm_twin(tmp_path):
    spec = {"grid": {"norm": ["layernorm", "dyt"], "alpha_init": ["calibrated", "constant:0.5"],
                     "lr_scheduler_type": ["cosine", "linear"]}}
    grid = expand_grid(spec, tmp_path)
    assert names(grid) == ["ln_schedcosine", "ln_schedlinear", "dyt_alphacalibrated_schedcosine",
                           "dyt_alphacalibrated_schedlinear", "dyt_alphac0.5_schedcosine", "dyt_alphac0.5_schedlinear"]
    ln = grid.runs[0]
    assert "alpha_init" not in ln.config and ln.params == {"norm": "layernorm", "lr_scheduler_type": "cosine"}
    dyt = grid.runs[4]
    assert twin_of(dyt, grid.runs) is ln


def test_a_sweep_over_conversion_and_dyt_training_keys_trains_one_layernorm_twin(tmp_path):
    # every ConvertConfig field and every TrainConfig field marked DyT-only: the LayerNorm twin ignores them
    spec = {"base": {"alpha_init": "calibrated"},
            "grid": [{"norm": ["layernorm", "dyt"], "calibration_refit": ["none", "affine"]},
                     {"norm": ["layernorm", "dyt"], "sink_weight": [1.0, 30.0], "refit_ridge": [0.001, 0.1],
                      "alpha_lr_relative": [True], "removal_order": ["depth"]}]}
    grid = expand_grid(spec, tmp_path)
    layernorm = [r for r in grid.runs if r.norm == "layernorm"]
    assert len(layernorm) == 1 and len(grid.runs) == 1 + 2 + 4, names(grid)
    assert not {"alpha_init", "calibration_refit", "sink_weight", "refit_ridge"} & set(layernorm[0].config)
    assert all(twin_of(r, grid.runs) is layernorm[0] for r in grid.runs if r.norm == "dyt")


def test_recipes_and_layernorm_twins(tmp_path):
    spec = {"grid": {"norm": ["layernorm", "dyt"], "recipe": ["dytune", "original-study"]}}
    grid = expand_grid(spec, tmp_path)
    by_name = {r.name: r for r in grid.runs}
    original = by_name["dyt_original-study"]
    for key, value in load_recipe("original-study").items():
        assert original.config[key] == value
    assert original.config["keep_affine"] is False and original.config["alpha_init"] == "constant:0.5"
    # each recipe has its own LayerNorm twin (same mode and distillation), told apart by name
    twin = twin_of(original, grid.runs)
    assert twin is not None and twin.config["mode"] == "lora" and twin.config["distill"] is False
    assert twin.name == "ln_distill0_lora" and "keep_affine" not in twin.config
    assert twin_of(by_name["dyt_dytune"], grid.runs).config["mode"] == "lora+dyt"


def test_exclude_union_of_grids_and_steps(tmp_path):
    spec = {"grid": [{"norm": ["layernorm", "dyt"], "mode": ["lora", "full"]}, {"norm": ["dyt"], "mode": ["dyt-only"]}],
            "exclude": [{"norm": "layernorm", "mode": "full"}], "steps": ["eval", "answers", "judge"],
            "answers": {"limit": 2}}
    grid = expand_grid(spec, tmp_path)
    assert names(grid) == ["ln_lora", "dyt_lora", "dyt_full", "dyt_dyt-only"]
    assert grid.steps == ["train", "eval", "answers", "judge"] and grid.step_settings["answers"] == {"limit": 2}


@pytest.mark.parametrize("spec, message", [
    ({"grid": {"norm": ["dyt"]}, "bogus": 1}, "unknown sweep key"),
    ({"grid": {"norm": []}}, "empty list"),
    ({"grid": {"recipe": ["nope"]}}, "unknown recipe"),
    ({"grid": {"norm": ["dyt"]}, "steps": ["judge"]}, "add `answers`"),
    ({"grid": {"norm": ["dyt"]}, "steps": ["evaluate"]}, "unknown step"),
    ({"grid": {"norm": ["dyt"]}, "exclude": [{"norm": "dyt"}]}, "no runs"),
    ({"base": {"output_dir": "x"}, "grid": {"norm": ["dyt"]}}, "sweep's own `output_dir:`"),
])
def test_errors(tmp_path, spec, message):
    with pytest.raises(DytuneError, match=message):
        expand_grid(spec, tmp_path)


def test_load_grid_file_and_base_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"model": "m", "max_steps": 2}))
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({"name": "x", "base": "base.yaml", "grid": {"norm": ["dyt"]}}))
    grid = load_grid(tmp_path / "g.yaml")
    assert grid.output_dir.as_posix() == "runs/x" and grid.runs[0].config["max_steps"] == 2
    with pytest.raises(DytuneError, match="not found"):
        load_grid(tmp_path / "missing.yaml")


def test_launch_command(tmp_path):
    cfg = tmp_path / "c.yaml"
    assert launch_command("accelerate launch --num_processes 8", cfg) == [
        "accelerate", "launch", "--num_processes", "8", "-m", "dytune.cli", "train", str(cfg)]
    assert launch_command("torchrun --nproc-per-node 2 train.py {config}", cfg)[-1] == str(cfg)
    assert launch_command(None, cfg)[1:] == ["-m", "dytune.cli", "train", str(cfg)]


REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("sweep_file", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_sweeps_expand_to_valid_train_configs(sweep_file, monkeypatch):
    pytest.importorskip("dytune.train", reason="dytune.train is not in this checkout")
    from dataclasses import fields

    from dytune.data import DataSpec
    from dytune.train.config import valid_keys

    monkeypatch.chdir(REPO)  # `base:` paths are relative to the repository root
    grid = load_grid(sweep_file)
    assert grid.runs and len({r.name for r in grid.runs}) == len(grid.runs)
    keys, data_keys = set(valid_keys()), {f.name for f in fields(DataSpec)}
    for run in grid.runs:
        assert set(run.config) <= keys, set(run.config) - keys
        assert set(run.config.get("data") or {}) <= data_keys
        assert not ("max_length" in run.config and "max_length" in (run.config.get("data") or {}))


@pytest.mark.parametrize("config_file", sorted((REPO / "configs" / "study").glob("*.yaml")), ids=lambda p: p.stem)
def test_study_configs_use_valid_keys(config_file):
    pytest.importorskip("dytune.train", reason="dytune.train is not in this checkout")
    from dytune.train.config import valid_keys

    config = yaml.safe_load(config_file.read_text())
    assert set(config) <= set(valid_keys()), set(config) - set(valid_keys())
