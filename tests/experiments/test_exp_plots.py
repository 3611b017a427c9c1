"""The report's plots keep every point visible: alphas that cross zero, a zero gradient norm."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dytune.experiments import plots
from dytune.experiments.runs import load_run

STEPS = 12


def write_run(root, name, alphas=None, norm="dyt", grad_norms=None):
    """A run directory as `dytune train` leaves it; `alphas`: {layer: value per step}."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "tiny", "norm": norm, "mode": "full",
                                                 "data": {"source": "chats.json"}, "seed": 0}))
    rows = []
    for step in range(STEPS):
        row = {"step": step + 1, "loss": 2.0, "learning_rate": 1e-3}
        if grad_norms is not None:
            row["grad_norm"] = grad_norms[step]
        for layer, values in (alphas or {}).items():
            row[f"alpha/{layer}"] = values[step]
        rows.append(json.dumps(row))
    (run / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    return load_run(run)


def visible(ax, line) -> bool:
    """Every point of the line lands inside the axes (a log axis clips y <= 0 to far below its view)."""
    ax.get_ylim()  # autoscale now, as drawing would
    xy = np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float)
    inside = (ax.transData + ax.transAxes.inverted()).transform(xy)
    return bool(np.isfinite(inside).all() and (inside >= -1e-9).all() and (inside <= 1 + 1e-9).all())


def crossing_alphas() -> dict[str, list[float]]:
    ramp = np.linspace(0, 1, STEPS)
    return {"model.layers.0.input_layernorm": list(0.5 - 0.9 * ramp),  # 0.5 -> -0.4: crosses zero
            "model.layers.0.post_attention_layernorm": list(0.02 + 0.01 * ramp),
            "model.layers.1.input_layernorm": list(4.0 + 8.0 * ramp),  # massive activations: a large alpha
            "model.norm": [0.8] * STEPS}


def test_alphas_crossing_zero_get_symlog_and_keep_every_point(tmp_path):
    alphas = crossing_alphas()
    fig = plots.alpha_figure([write_run(tmp_path, "dyt", alphas)])
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog"
    values = np.abs(np.concatenate([np.asarray(v) for v in alphas.values()]))
    assert ax.yaxis.get_transform().linthresh == pytest.approx(np.percentile(values[values != 0], 10))
    lines = ax.get_lines()
    assert len(lines) == len(alphas)
    for line, (layer, ys) in zip(lines, alphas.items()):
        assert list(line.get_xdata()) == list(range(1, STEPS + 1))
        np.testing.assert_allclose(line.get_ydata(), ys)
        assert visible(ax, line), layer
    ax.set_yscale("log")  # what the plot used to do: the line through zero loses its points
    assert not visible(ax, lines[0])


def test_alpha_scale_log_for_a_positive_wide_span_linear_for_a_narrow_one(tmp_path):
    positive = {k: [abs(v) + 0.01 for v in vs] for k, vs in crossing_alphas().items()}
    narrow = {"a": list(np.linspace(0.3, -0.1, STEPS)), "b": list(np.linspace(0.2, 0.25, STEPS))}
    fig = plots.alpha_figure([write_run(tmp_path, "wide", positive), write_run(tmp_path, "narrow", narrow)])
    scales = {ax.get_title(): ax.get_yscale() for ax in fig.axes if ax.get_lines()}
    assert scales == {"wide": "log", "narrow": "linear"}
    for ax in fig.axes:
        assert all(visible(ax, line) for line in ax.get_lines())
    path = plots.alpha_trajectories([write_run(tmp_path, "saved", crossing_alphas())], tmp_path / "alpha.png")
    assert path.is_file() and path.stat().st_size > 0


def test_grad_norm_plot_keeps_a_zero_norm(tmp_path):
    norms = [10.0, 5.0, 0.0, 0.5] + [0.1] * (STEPS - 4)  # a step with a zero gradient norm
    fig = plots.line_figure([write_run(tmp_path, "dyt", grad_norms=norms)], "grad_norm", "step", "t", "x", "y")
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog"
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), norms)
    assert visible(ax, line)
    assert plots.line_figure([write_run(tmp_path, "lin", grad_norms=norms)], "grad_norm", "step", "t", "x", "y",
                             log_y=False).axes[0].get_yscale() == "linear"
    assert plots.line_figure([write_run(tmp_path, "none")], "grad_norm", "step", "t", "x", "y") is None
