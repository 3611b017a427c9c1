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
                 "--calibration-samples", "8", "--calibration-refit", "linear", "--refit_ridge", "0.5",
                 "--refit-ridge-to", "original"]) == 0
    dyt = dytune.load(str(out)).config.dyt
    assert (dyt["refit"], dyt["refit_ridge"], dyt["refit_ridge_to"]) == ("linear", 0.5, "original")


def test_convert_cli_norm_selection_and_constant(tiny_dir, tmp_path, capsys):
    out = tmp_path / "dyt"
    assert main(["convert", str(tiny_dir), str(out), "--alpha-init", "constant:0.5", "--norms", "attn,final"]) == 0
    assert "3 of 5 norm layers converted" in capsys.readouterr().out
    alphas = [m.alpha.item() for _, m in dytune.dyt_modules(dytune.load(str(out)))]
    assert alphas == [0.5, 0.5, 0.5]


def test_convert_cli_portable_writes_the_modeling_code_and_auto_map(tiny_dir, tmp_path):
    from dytune.portable import AUTO_MAP

    assert main(["convert", str(tiny_dir), str(tmp_path / "portable"), "--alpha-init", "paper", "--portable"]) == 0
    assert main(["convert", str(tiny_dir), str(tmp_path / "plain"), "--alpha-init", "paper"]) == 0
    portable, plain = tmp_path / "portable", tmp_path / "plain"
    for name in ("configuration_dytune.py", "modeling_dytune.py"):
        assert (portable / name).is_file() and not (plain / name).exists()
    assert json.loads((portable / "config.json").read_text())["auto_map"] == AUTO_MAP
    assert "auto_map" not in json.loads((plain / "config.json").read_text())
    # the portable directory is still an ordinary dytune checkpoint: the same weights load through dytune
    a, b = dytune.load(str(portable)), dytune.load(str(plain))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


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


def test_import_of_the_cli_loads_no_torch_and_help_answers():
    import subprocess
    import sys

    code = ("import sys, dytune.cli; assert 'torch' not in sys.modules, 'torch'; "
            "dytune.cli.build_parser(); assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_both_flag_spellings_parse():
    from dytune.cli import build_parser, normalise_spellings
    from dytune.train.config import parse_config

    parser = build_parser()
    for flag in ("--max_new_tokens", "--max-new-tokens"):
        args = parser.parse_args(normalise_spellings(parser, ["answer", "model", "--out", "a.jsonl", flag, "8"]))
        assert args.max_new_tokens == 8
    for flag in ("--max-steps", "--max_steps"):
        args = parser.parse_args(normalise_spellings(parser, ["train", flag, "1"]))
        assert parse_config(args.config, args.extra).max_steps == 1
    args = parser.parse_args(normalise_spellings(parser, ["convert", "a", "b", "--sink_weight=30", "--per_channel"]))
    assert (args.sink_weight, args.per_channel) == (30.0, True)
    with pytest.raises(SystemExit):  # a flag no command has stays an error
        parser.parse_args(normalise_spellings(parser, ["convert", "a", "b", "--no_such_flag", "1"]))


def test_every_convert_flag_is_a_convert_config_field_accepted_by_train():
    from dataclasses import fields

    from dytune.cli import build_parser
    from dytune.conversion.config import ConvertConfig
    from dytune.train.config import parse_config

    convert = build_parser()._subparsers._group_actions[0].choices["convert"]
    options = {a.dest: a for a in convert._actions if a.option_strings}
    not_conversion = {"help", "overwrite", "trust_remote_code", "portable"}
    assert set(options) - {f.name for f in fields(ConvertConfig)} == not_conversion
    assert {f.name for f in fields(ConvertConfig)} <= set(options)
    given = {"alpha_init": "paper", "norms": "attn,final", "per_channel": "true", "keep_affine": "false",
             "calibration": "data.json", "calibration_samples": "7", "calibration_max_length": "99",
             "calibration_max_tokens": "123", "calibration_method": "parallel", "calibration_refit": "none",
             "sink_weight": "3.5", "refit_ridge": "0.25", "refit_ridge_to": "original", "form": "fakeln"}
    assert set(given) == {f.name for f in fields(ConvertConfig)}
    argv = [x for name, value in given.items() for x in (options[name].option_strings[0], value)]
    from_cli = ConvertConfig.from_object(convert.parse_args(["src", "out", *argv]))
    from_train = parse_config(None, argv).convert_config()
    assert from_cli == from_train
    assert (from_cli.per_channel, from_cli.keep_affine, from_cli.calibration_max_tokens) == (True, False, 123)
    assert from_cli != ConvertConfig()  # every value above differs from its default
    assert all(getattr(from_cli, f.name) != f.default for f in fields(ConvertConfig))
