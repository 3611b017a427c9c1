import json

import pytest
import torch

import dytune
from dytune.cli import main
from dytune.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "llama"
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_convert_cli_prints_report_and_saves(tiny_dir, tmp_path, capsys, shared_data):
    out = tmp_path / "dyt"
    code = main(["convert", str(tiny_dir), str(out), "--calibration", str(shared_data / "alpaca_sample.json"),
                 "--calibration-samples", "8"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| model.layers.0.input_layernorm | attn | rmsnorm | yes |" in printed
    assert "5 of 5 norm layers converted" in printed
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["calibration_tokens"] > 200 and len(report["layers"]) == 5
    model = dytune.load(str(out))
    assert len(dytune.dyt_modules(model)) == 5
    assert model.config.dyt["source"] == str(tiny_dir)


def test_convert_cli_linear_refit_ridge_flags_reach_the_saved_model(tiny_dir, tmp_path, shared_data):
    out = tmp_path / "dyt"
    assert main(["convert", str(tiny_dir), str(out), "--calibration", str(shared_data / "alpaca_sample.json"),
                 "--calibration-samples", "8", "--refit", "linear", "--refit-ridge", "0.5",
                 "--refit-ridge-to", "original"]) == 0
    dyt = dytune.load(str(out)).config.dyt
    assert (dyt["refit"], dyt["refit_ridge"], dyt["refit_ridge_to"]) == ("linear", 0.5, "original")


def test_convert_cli_norm_selection_and_constant(tiny_dir, tmp_path, capsys):
    out = tmp_path / "dyt"
    assert main(["convert", str(tiny_dir), str(out), "--alpha-init", "constant:0.5", "--norms", "attn,final"]) == 0
    assert "3 of 5 norm layers converted" in capsys.readouterr().out
    alphas = [m.alpha.item() for _, m in dytune.dyt_modules(dytune.load(str(out)))]
    assert alphas == [0.5, 0.5, 0.5]


def test_convert_cli_errors(tiny_dir, tmp_path, capsys):
    existing = tmp_path / "exists"
    existing.mkdir()
    assert main(["convert", str(tiny_dir), str(existing), "--alpha-init", "paper"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert main(["convert", str(tiny_dir), str(tmp_path / "x"), "--norms", "attn,nope"]) == 2
    assert "unknown norm kind" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "y")]) == 2
    assert "neither a model directory nor a .gguf" in capsys.readouterr().err
    assert main(["convert", str(tiny_dir), str(tmp_path / "z"), "--alpha-init", "constant:abc"]) == 2
    assert "bad alpha init" in capsys.readouterr().err


def test_offline_hub_id_fails_fast_and_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import time

    start = time.time()
    with pytest.raises(dytune.DytuneError, match="not in the local Hugging Face cache"):
        dytune.load_model("some-org/not-cached-model")
    assert time.time() - start < 10
