"""`bf16: auto` (the default recipe's precision): bf16 only where the hardware makes it fast, float32 elsewhere; the
choice is said once in the log and recorded in the run directory."""

from __future__ import annotations

import pytest
import torch
import yaml

from dytune.errors import DytuneError
from dytune.train.config import parse_config
from dytune.train.precision import bf16_is_fast, resolve_bf16


def cpu_with(monkeypatch, amx: bool = False, avx512_bf16: bool = False) -> None:
    """A CPU-only machine with (or without) the instructions that make bf16 fast."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)


@pytest.mark.parametrize(("amx", "avx", "fast", "why"), [(True, False, True, "AMX"), (False, True, True, "AVX512-BF16"),
                                                         (False, False, False, "neither AMX nor AVX512-BF16")])
def test_cpu_bf16_is_fast_only_with_amx_or_avx512_bf16(monkeypatch, amx, avx, fast, why) -> None:
    cpu_with(monkeypatch, amx, avx)
    got, reason = bf16_is_fast("cpu")
    assert got is fast and why in reason


def test_auto_resolves_by_the_hardware_and_says_so(monkeypatch) -> None:
    cpu_with(monkeypatch, amx=True)
    assert resolve_bf16("auto", "cpu") == (True, "bf16: auto -> bf16 (a CPU with AMX)")
    cpu_with(monkeypatch)
    on, note = resolve_bf16("AUTO", "cpu")
    assert on is False and note.startswith("bf16: auto -> float32 (this CPU has neither AMX nor AVX512-BF16")
    assert resolve_bf16("auto", "xpu / mps")[0] is False


def test_explicit_bf16_is_kept_but_a_slow_cpu_is_named(monkeypatch) -> None:
    cpu_with(monkeypatch)
    on, note = resolve_bf16(True, "cpu")
    assert on is True and "bf16: auto would train in float32 here" in note
    assert resolve_bf16("false", "cpu") == (False, None) and resolve_bf16(False, "cpu") == (False, None)
    cpu_with(monkeypatch, avx512_bf16=True)
    assert resolve_bf16(True, "cpu") == (True, None)
    assert resolve_bf16("y", "cpu")[0] is True and resolve_bf16("no", "cpu") == (False, None)  # argparse's words
    with pytest.raises(DytuneError, match="bf16 must be true, false or auto, got 'sometimes'"):
        resolve_bf16("sometimes", "cpu")


def test_auto_is_off_under_fp16_and_keeps_what_a_resumed_run_recorded(monkeypatch) -> None:
    cpu_with(monkeypatch, amx=True)
    assert resolve_bf16("auto", "cuda", fp16=True) == (False, "bf16: auto -> float32 (fp16 is on)")
    assert resolve_bf16("auto", "cpu", recorded=False) == (False, "bf16: auto -> float32 (as this run trained so far)")
    assert resolve_bf16(True, "cpu", recorded=False)[0] is True  # only auto follows the record


def test_the_last_bf16_flag_wins(monkeypatch) -> None:
    cpu_with(monkeypatch, amx=True)
    assert parse_config(None, ["--output_dir", "unused", "--bf16", "auto", "--bf16", "false"]).bf16 is False
    assert parse_config(None, ["--output_dir", "unused", "--bf16", "false", "--bf16=auto"]).bf16 is True


@pytest.mark.parametrize("argv", [[], ["--bf16", "auto"], ["--bf16=auto"], ["--recipe", "none", "--bf16", "auto"]])
def test_the_default_recipe_and_the_flag_resolve_auto(monkeypatch, argv) -> None:
    cpu_with(monkeypatch, amx=True)
    assert parse_config(None, ["--output_dir", "unused", *argv]).bf16 is True
    cpu_with(monkeypatch)
    cfg = parse_config(None, ["--output_dir", "unused", *argv])
    assert cfg.bf16 is False and cfg.bf16_note.startswith("bf16: auto -> float32")


def test_a_config_file_can_say_auto_and_a_flag_overrides_it(monkeypatch, tmp_path) -> None:
    cpu_with(monkeypatch)
    config = tmp_path / "c.yaml"
    config.write_text("recipe: none\nbf16: auto\n")
    assert parse_config(config, ["--output_dir", "unused"]).bf16 is False
    forced = parse_config(config, ["--output_dir", "unused", "--bf16", "true"])
    assert forced.bf16 is True and "slower than float32" in forced.bf16_note


def test_a_run_logs_the_choice_and_records_float32(monkeypatch, quick, tmp_path, capsys) -> None:
    from dytune.train import train

    cpu_with(monkeypatch)
    train(quick(mode="full", bf16="auto", max_steps=1, eval_strategy="no", output_dir=str(tmp_path / "auto")))
    assert "dytune train: bf16: auto -> float32 (this CPU has neither" in capsys.readouterr().err
    recorded = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert recorded["bf16"] is False


def test_a_run_resumed_on_a_faster_machine_keeps_its_precision(monkeypatch, quick, tmp_path, capsys) -> None:
    from dytune.train import train

    cpu_with(monkeypatch)
    run = str(tmp_path / "resumed")
    train(quick(mode="full", bf16="auto", max_steps=2, save_steps=1, eval_strategy="no", output_dir=run))
    cpu_with(monkeypatch, amx=True)  # the next session's machine has AMX
    capsys.readouterr()
    summary = train(quick(mode="full", bf16="auto", max_steps=3, eval_strategy="no", output_dir=run, resume=True))
    assert summary["resumed_from"] and "bf16: auto -> float32 (as this run trained so far)" in capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "resumed" / "config.yaml").read_text())["bf16"] is False


def test_dry_run_says_what_auto_chose(monkeypatch, capsys) -> None:
    import json

    from dytune.cli import main

    cpu_with(monkeypatch)
    assert main(["train", "--dry-run", "--output_dir", "unused"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["bf16"] is False
    assert "dytune train: note: bf16: auto -> float32 (this CPU has neither AMX nor AVX512-BF16" in out.err
