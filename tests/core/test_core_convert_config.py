"""ConvertConfig: one declaration of every conversion option; convert(model, config) -> Conversion."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest
import torch

import dytune
from dytune.conversion import Conversion, ConvertConfig
from dytune.errors import DytuneError
from dytune.testing import tiny_model, tiny_tokenizer

IDS = torch.tensor([[1, 5, 9, 3, 7, 2]])


def test_config_and_keywords_give_the_same_conversion():
    a, b = tiny_model("llama"), tiny_model("llama")
    by_config = dytune.convert(a, ConvertConfig(alpha_init="paper", norms="attn,final"))
    by_keywords = dytune.convert(b, alpha_init="paper", norms="attn,final")
    assert by_config.config == by_keywords.config == ConvertConfig(alpha_init="paper", norms="attn,final")
    assert torch.equal(a(IDS).logits, b(IDS).logits)
    # keywords override the config's fields
    c = dytune.convert(tiny_model("llama"), ConvertConfig(alpha_init="paper"), alpha_init=0.25)
    assert c.config.alpha_init == "0.25" and {layer.alpha for layer in c.report.converted} == {0.25}


def test_conversion_holds_the_replaced_norms_and_reverts_them():
    model = tiny_model("llama")
    norm = model.model.layers[0].input_layernorm
    before = model(IDS).logits.detach()
    conversion = dytune.convert(model, alpha_init=0.7, source="my-model")
    assert isinstance(conversion, Conversion) and conversion.originals["model.layers.0.input_layernorm"] is norm
    assert set(conversion.originals) == {layer.name for layer in conversion.report.converted}
    assert model.config.dyt["source"] == "my-model" == conversion.source  # set by convert, not by the caller
    assert len(conversion.converted) == 5  # the report's fields read through, as when convert returned it
    conversion.revert(model)
    assert model.model.layers[0].input_layernorm is norm and torch.equal(model(IDS).logits, before)
    with pytest.raises(DytuneError, match="not converted in this process"):
        dytune.revert(model)


def test_source_defaults_to_the_models_name(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "plain")
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    dytune.convert(loaded, alpha_init=0.5)
    assert loaded.config.dyt["source"] == str(tmp_path / "plain")


@pytest.mark.parametrize("values, message", [
    ({"alpha_init": "magic"}, "unknown alpha init"),
    ({"norms": "attn,nope"}, "unknown norm kind"),
    ({"calibration_method": "random"}, "calibration_method must be one of sequential, parallel"),
    ({"calibration_refit": "cubic"}, "calibration_refit must be one of none, affine, linear"),
    ({"refit_ridge": -1.0}, "refit_ridge must be >= 0"),
    ({"calibration_max_tokens": 0}, "calibration_max_tokens must be positive"),
    ({"calibration_refit": "linear", "calibration_method": "parallel"}, "linear needs calibration_method sequential"),
])
def test_bad_settings_are_refused_with_what_to_do(values, message):
    with pytest.raises(DytuneError, match=message):
        ConvertConfig(**values)
    with pytest.raises(DytuneError, match=message):  # the same check in training
        from dytune.train.config import parse_config

        parse_config(None, [], **values)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(DytuneError, match="conversion options are: alpha_init, norms"):
        dytune.convert(tiny_model("llama"), alpha=0.5)


def test_one_default_for_every_option_in_training_too():
    from dytune.train.config import TrainConfig

    train_fields = {f.name: f for f in fields(TrainConfig)}
    for f in fields(ConvertConfig):
        assert train_fields[f.name].default == f.default, f.name
    assert ConvertConfig().calibration_refit == "affine"


def test_training_converts_with_calibration_max_tokens(tmp_path):
    """TrainConfig passes every conversion key to convert, calibration_max_tokens included."""
    from dytune.train.config import parse_config

    cfg = parse_config(None, ["--calibration_max_tokens", "40", "--calibration-refit", "none"], model="m")
    model, tok = tiny_model("llama"), tiny_tokenizer()
    conversion = dytune.convert(model, cfg.convert_config(), tokenizer=tok, progress=False)
    assert conversion.report.calibration_tokens > 40  # tokens seen; the fits use the first 40
    assert conversion.config.calibration_max_tokens == 40 and conversion.report.refit == "none"


def test_conversion_modules_import_without_a_cycle_and_the_config_without_torch():
    code = ("import sys; from dytune.conversion.config import ConvertConfig, add_arguments; "
            "assert 'torch' not in sys.modules; import dytune.conversion.init.calibrate")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("imports", ["import dytune\nfrom transformers import AutoModelForCausalLM",
                                     "from transformers import AutoModelForCausalLM\nimport dytune"])
def test_import_dytune_then_plain_from_pretrained_loads_dyt_in_either_order(tmp_path, imports):
    from dytune.testing import run_in_fresh_process

    model = tiny_model("llama")
    dytune.convert(model, alpha_init=0.6)
    dytune.save(model, tmp_path / "dyt")
    out = run_in_fresh_process(imports + f"""
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'dyt')!r})
print(type(model).__name__, len(dytune.dyt_modules(model)), float(dytune.dyt_modules(model)[0][1].alpha))
""")
    assert out.strip().splitlines()[-1] == "DyTLlamaForCausalLM 5 0.6000000238418579"
