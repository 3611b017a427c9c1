"""benchmarks/demo_screen.py: screen runs' evaluations collected into the result file, earlier variants kept."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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
