"""The console shows an alpha summary per training log; metrics.jsonl keeps the alpha of every DyT layer."""

from __future__ import annotations

import ast
import math
import statistics

import pytest

from dytune.train import train
from dytune.train.callbacks import read_metrics, summarize_alphas


def console_logs(text: str) -> list[dict]:
    """The log dicts HF's PrinterCallback / ProgressCallback wrote (`str(dict)` lines)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            out.append(ast.literal_eval(line))
    return out


@pytest.mark.parametrize("disable_tqdm", [True, False], ids=["printer", "progress-bar"])
def test_console_summarises_alphas_and_metrics_keep_every_layer(quick, tmp_path, capfd, disable_tqdm) -> None:
    cfg = quick(mode="dyt-only", max_steps=3, eval_strategy="no", disable_tqdm=disable_tqdm,
                output_dir=str(tmp_path / "run"))
    summary = train(cfg)
    out, err = capfd.readouterr()
    console = out + err
    assert "alpha/" not in console

    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(rows) == 3
    layers = [k for k in rows[0] if k.startswith("alpha/")]
    assert len(layers) == 5  # two blocks of two norms, and the final norm
    assert {k[len("alpha/"):] for k in layers} == set(summary["alpha"])
    assert all(set(layers) <= set(r) for r in rows)  # every layer, every step

    logs = [log for log in console_logs(console) if "loss" in log]
    assert len(logs) == len(rows)
    for log, row in zip(logs, rows):
        alphas = [row[k] for k in layers]
        assert log["alpha_min"] == f"{min(alphas):.4g}"  # HF's float format
        assert log["alpha_median"] == f"{statistics.median(alphas):.4g}"
        assert log["alpha_max"] == f"{max(alphas):.4g}"
        assert log["alpha_layers"] == len(layers)
        assert log["loss"] == f"{row['loss']:.4g}"
        assert list(log).index("alpha_min") == list(row).index(layers[0]) - 2  # where the alphas stood (no step, time)


def test_summary_keeps_negative_alphas_and_counts_non_finite_ones() -> None:
    logs = {"loss": 2.0, "alpha/a": -0.25, "alpha/b": 0.5, "alpha/c": 3.0, "alpha/d": math.nan, "tokens": 64}
    out = summarize_alphas(logs)
    assert out == {"loss": 2.0, "alpha_min": -0.25, "alpha_median": 0.5, "alpha_max": 3.0, "alpha_layers": 4,
                   "alpha_nonfinite": 1, "tokens": 64}
    assert "alpha/a" in logs  # the log the other callbacks see is untouched
    assert summarize_alphas({"eval_loss": 1.0}) == {"eval_loss": 1.0}
