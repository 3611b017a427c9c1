"""Named recipes (dytune/recipes/*.yaml): each resolves to the settings it names, under the file and the flags."""

from __future__ import annotations

import pytest
import torch
import yaml

from dytune.errors import DytuneError
from dytune.train import TrainConfig
from dytune.train.config import DYT_ONLY_KEYS, parse_config, parse_lr_multipliers
from dytune.train.precision import resolve_bf16
from dytune.train.recipes import DEFAULT_RECIPE, load_recipe, recipe_names


def _value(cfg: TrainConfig, key: str):  # noqa: ANN202
    value = getattr(cfg, key)
    return getattr(value, "value", value)  # enums (lr_scheduler_type) compare by their string


def _expected(key: str, value):  # noqa: ANN202
    if key == "lr_multipliers":
        return parse_lr_multipliers(value)
    if key == "bf16":  # true, false or auto, resolved on this machine (test_train_precision)
        return resolve_bf16(value, "cuda" if torch.cuda.is_available() else "cpu")[0]
    return value


@pytest.mark.parametrize("name", recipe_names())
def test_each_recipe_resolves_to_the_settings_it_names(name, tmp_path):
    cfg = parse_config(None, ["--recipe", name, "--output_dir", str(tmp_path)])
    preset = load_recipe(name)
    assert preset, name
    assert cfg.recipe == name
    for key, expected in preset.items():
        assert _value(cfg, key) == _expected(key, expected), (name, key)


def test_the_shipped_recipes_include_the_default_and_the_study():
    names = recipe_names()
    assert DEFAULT_RECIPE in names and "original-study" in names and "linear-refit" in names
    study = load_recipe("original-study")
    assert study["alpha_init"] == "constant:0.5" and study["keep_affine"] is False and study["mode"] == "lora"


def test_dytune_train_without_a_recipe_takes_the_default(tmp_path):
    cfg = parse_config(None, ["--output_dir", str(tmp_path)])
    assert cfg.recipe == DEFAULT_RECIPE
    for key, expected in load_recipe(DEFAULT_RECIPE).items():
        assert _value(cfg, key) == _expected(key, expected), key


def test_file_and_flags_override_the_recipe(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"recipe": "linear-refit", "learning_rate": 3e-5, "mode": "full"}))
    cfg = parse_config(path, ["--alpha_lr_multiplier", "7", "--output_dir", str(tmp_path)])
    assert cfg.learning_rate == 3e-5 and cfg.alpha_lr_multiplier == 7.0
    assert cfg.calibration_refit == "linear"  # the rest still from the recipe


def test_recipe_none_is_only_the_given_keys(tmp_path):
    cfg = parse_config(None, ["--recipe", "none", "--output_dir", str(tmp_path)])
    plain = TrainConfig(output_dir=str(tmp_path))
    for key in ("mode", "learning_rate", "calibration_refit", "distill", "alpha_lr_multiplier"):
        assert _value(cfg, key) == _value(plain, key), key


def test_a_layernorm_run_takes_the_recipe_without_its_dyt_keys(tmp_path):
    cfg = parse_config(None, ["--recipe", "linear-refit", "--norm", "layernorm", "--output_dir", str(tmp_path)])
    preset = load_recipe("linear-refit")
    plain = TrainConfig(output_dir=str(tmp_path))
    assert cfg.norm == "layernorm"
    assert cfg.learning_rate == preset["learning_rate"] and cfg.mode == preset["mode"]  # the same training
    for key in set(preset) & DYT_ONLY_KEYS - {"norm"}:
        assert _value(cfg, key) == _value(plain, key), key  # the conversion is the DyT run's only


def test_from_recipe_is_the_python_spelling(tmp_path):
    cfg = TrainConfig.from_recipe("original-study", output_dir=str(tmp_path), learning_rate=1e-3)
    assert cfg.recipe == "original-study" and cfg.alpha_init == "constant:0.5" and cfg.learning_rate == 1e-3
    assert TrainConfig.from_recipe(output_dir=str(tmp_path)).recipe == DEFAULT_RECIPE


def test_unknown_recipe_is_a_one_line_error(tmp_path):
    with pytest.raises(DytuneError, match="unknown recipe 'nope': choose from .*original-study"):
        parse_config(None, ["--recipe", "nope", "--output_dir", str(tmp_path)])
    with pytest.raises(DytuneError, match="unknown recipe"):
        TrainConfig(recipe="nope", output_dir=str(tmp_path))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_the_default_recipe_trains_every_architecture(arch, tmp_path, chat_data):
    """Its settings are architecture-independent (the lr_multipliers glob matches every family's blocks)."""
    from dytune.testing import tiny_model, tiny_tokenizer
    from dytune.train import train

    model = tmp_path / arch
    tiny_model(arch).save_pretrained(model)
    tiny_tokenizer(chat_template=True).save_pretrained(model)
    cfg = TrainConfig.from_recipe(model=str(model), data={"source": str(chat_data), "val_fraction": 0.1,
                                                          "cache_dir": str(tmp_path / "cache")},
                                  output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                                  calibration_max_tokens=512, eval_strategy="no", report_to="none",
                                  disable_tqdm=True, logging_steps=1)
    summary = train(cfg)
    assert summary["status"] == "completed" and cfg.recipe == DEFAULT_RECIPE
