"""benchmarks/demo_screen.py: screen runs' evaluations collected into the result file, earlier variants kept."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _screen_module():
    spec = importlib.util.spec_from_file_location("demo_screen", REPO / "benchmarks" / "demo_screen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_collect_builds_curves_from_metrics_and_keeps_earlier_variants(tmp_path: Path) -> None:
    screen = _screen_module()
    work, out = tmp_path / "work", tmp_path / "screen.json"
    (work / "fast").mkdir(parents=True)
    rows = [{"step": s, "loss": 5.0, "tokens": 700 * s} for s in range(1, 9)]
    rows += [{"step": 4, "eval_loss": 3.51234, "num_input_tokens_seen": 2800},
             {"step": 8, "eval_loss": 3.2, "num_input_tokens_seen": 5600},
             {"step": 8, "eval_loss": 3.2, "num_input_tokens_seen": 5600}]  # the end-of-training evaluation
    (work / "fast" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "recovery.yaml").write_text(yaml.safe_dump({"learning_rate": 8e-5, "max_steps": 8}))
    out.write_text(json.dumps({"variants": {"old": {"description": "before", "curve": [
        {"step": 8, "tokens": 5600, "eval_loss": 3.3}]}}, "original_ce": 1.9}))
    variants = {"fast": {"description": "the recipe at 2x", "keys": {"learning_rate": 1.6e-4}},
                "never-run": {"description": "no run directory", "keys": {"adam_beta2": 0.95}}}

    result = screen.collect(work, {"base": "the recipe now", "variants": variants}, out)

    assert result["variants"]["fast"]["curve"] == [{"step": 4, "tokens": 2800, "eval_loss": 3.5123},
                                                   {"step": 8, "tokens": 5600, "eval_loss": 3.2}]
    assert result["variants"]["fast"]["keys"] == {"learning_rate": 1.6e-4}
    assert result["variants"]["fast"]["base"] == "the recipe now"
    assert result["variants"]["old"]["curve"][0]["eval_loss"] == 3.3  # no run here: kept as it was
    assert "never-run" not in result["variants"]
    assert result["base_config_now"]["max_steps"] == 8
    assert json.loads(out.read_text()) == result
    screen.plot(result, tmp_path / "screen.png")
    assert (tmp_path / "screen.png").stat().st_size > 10_000


def test_a_variant_with_settings_trains_from_and_reports_its_own_start(tmp_path: Path, capsys) -> None:
    screen = _screen_module()
    work, out = tmp_path / "work", tmp_path / "screen.json"
    own = work / "cal-start"
    (work / "cal").mkdir(parents=True)
    own.mkdir()
    (work / "cal" / "metrics.jsonl").write_text(json.dumps({"step": 8, "eval_loss": 3.1,
                                                            "num_input_tokens_seen": 5600}) + "\n")
    (own / "start.json").write_text(json.dumps({"original_ce": 1.9, "before_ce": 3.654321}))
    variant = {"description": "more calibration", "settings": {"calibration_texts": 192}, "keys": {}}
    variants = {"cal": variant, "plain": {"description": "the recipe", "keys": {}}}

    assert screen.start_dir(work, variant, "cal") == own
    assert screen.start_dir(work, variants["plain"], "plain") == work
    result = screen.collect(work, {"base": "b", "variants": variants}, out)
    assert result["variants"]["cal"]["before_ce"] == 3.6543
    assert result["variants"]["cal"]["settings"] == {"calibration_texts": 192}

    config = tmp_path / "screen.yaml"
    config.write_text(yaml.safe_dump({"base": "b", "variants": variants}))
    for argv, message in ((["prepare", "plain"], "'plain' has no `settings:`"),
                          (["prepare", "nope"], "unknown variant 'nope'"),
                          (["run", "cal"], "prepare cal` first")):
        with pytest.raises(SystemExit) as stop:
            screen.main([*argv, "--work", str(work), "--variants", str(config)])
        assert stop.value.code == 2 and message in capsys.readouterr().err
