"""The report's figures (matplotlib, Agg), LayerNorm in blue and DyT in orange in every one of them.

Each function takes runs (`dytune.experiments.runs.Run`) and a path, writes a PNG, and returns the path, or
None when the runs hold no data for that figure (the report then says so instead of showing an empty plot).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from dytune.experiments.runs import NORM_LABELS, Run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Okabe-Ito colours (colour-blind safe). LN and DyT keep theirs everywhere, the demo's too.
COLORS = {"layernorm": "#0072B2", "dyt": "#E69F00", "original": "#0072B2", "dyt-before": "#CC79A7"}
GROUP_COLORS = ["#009E73", "#CC79A7", "#D55E00", "#555555", "#882255", "#44AA99", "#999933", "#332288"]
LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.grid": True, "grid.alpha": 0.3,
                         "legend.fontsize": 8, "figure.dpi": 110})
    return plt


def varying(runs: list[Run], exclude: tuple[str, ...] = ()) -> list[str]:
    """Facets whose value differs between runs (model, mode, seed, grid keys), in a stable order."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.params if k not in keys]
    return [k for k in keys if k not in exclude and len({str(r.params.get(k)) for r in runs}) > 1]


def setting_label(run: Run, keys: list[str]) -> str:
    parts = []
    for key in keys:
        value = run.params.get(key)
        if value is None:  # a LayerNorm run has no alpha_init, ...
            continue
        parts.append(str(value) if key in ("model", "mode", "dataset", "recipe") else f"{key}={value}")
    return ", ".join(parts)


def ordered(runs: list[Run]) -> list[Run]:
    """Smallest model first, then by setting; LayerNorm before DyT."""
    keys = varying(runs, exclude=("norm", "seed"))
    return sorted(runs, key=lambda r: (r.parameters or 0, setting_label(r, keys), r.norm != "layernorm",
                                       str(r.params.get("seed"))))


def _ema(values: list[float], weight: float) -> list[float]:
    out, last = [], None
    for v in values:
        last = v if last is None else weight * last + (1 - weight) * v
        out.append(last)
    return out


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def y_scale(ax, values: list[float], log: bool | None = None) -> str:
    """Set, and return, a y scale that keeps every point visible. Positive data spanning more than 20x (or `log`
    True) gets a log axis. Data with zeros or negatives cannot (a log axis drops those points, and with them
    the line), so a wide span of it gets symlog, linear within the 10th percentile of |value| so the small
    values stay readable. Anything else, or `log` False, stays linear."""
    import numpy as np

    finite = np.array([v for v in values if math.isfinite(v)], dtype=float)
    sizes = np.abs(finite[finite != 0])
    scale = "linear"
    if log is not False and sizes.size:
        if (finite > 0).all():
            if log or sizes.max() / sizes.min() > 20:
                scale = "log"
        else:
            linthresh = float(np.percentile(sizes, 10))
            if log or sizes.max() / linthresh > 20:
                scale = "symlog"
                ax.set_yscale("symlog", linthresh=linthresh)
    if scale != "symlog":
        ax.set_yscale(scale)
    return scale


def _grid(plt, n: int, width: float = 5.0, height: float = 3.4):
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows + 0.9), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _norm_handles(plt, norms: list[str], styles: dict[str, dict]) -> list:
    """Legend proxies: one entry per (norm, curve kind)."""
    from matplotlib.lines import Line2D

    handles = []
    for norm in ("layernorm", "dyt"):
        if norm in norms:
            for kind, kw in styles.items():
                handles.append(Line2D([], [], color=COLORS[norm], label=f"{NORM_LABELS[norm]} {kind}".strip(), **kw))
    return handles


def _by_dataset(runs: list[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        out[run.dataset].append(run)
    return dict(sorted(out.items()))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-") or "data"


def loss_curves(runs: list[Run], out_dir: Path) -> list[Path]:
    """One figure per dataset: train cross-entropy (solid; EMA-smoothed over a faint raw curve when long) and
    validation loss (dashed) against steps, one panel per setting (model, mode, ...) holding the LayerNorm
    run and its DyT twins; DyT variants (alpha init, recipe, ...) are told apart by markers."""
    from dytune.experiments.runs import is_dyt_only

    plt = _plt()
    written = []
    runs = [r for r in runs if r.series("train_loss")[1] or r.series("val_loss")[1]]
    all_keys = varying(runs, exclude=("norm", "dataset", "seed"))
    keys = [k for k in all_keys if not is_dyt_only(k)]
    variant_keys = [k for k in all_keys if is_dyt_only(k)]
    variants = list(dict.fromkeys(setting_label(r, variant_keys) for r in ordered(runs) if r.norm == "dyt"))
    for dataset, group in _by_dataset(ordered(runs)).items():
        settings: dict[str, list[Run]] = defaultdict(list)
        for run in group:
            settings[setting_label(run, keys)].append(run)
        fig, axes = _grid(plt, len(settings))
        for ax, (label, members) in zip(axes, settings.items()):
            for run in members:
                color = COLORS.get(run.norm, "#555555")
                variant = setting_label(run, variant_keys) if run.norm == "dyt" else ""
                i = variants.index(variant) if variant in variants else 0
                mark = dict(marker=MARKERS[i % len(MARKERS)], markevery=0.1, ms=4) if len(variants) > 1 and \
                    run.norm == "dyt" else {}
                xs, ys = run.series("train_loss")
                if ys:
                    if len(ys) > 40:
                        ax.plot(xs, ys, color=color, alpha=0.25, lw=0.8)
                        ys = _ema(ys, 0.9)
                    ax.plot(xs, ys, color=color, lw=1.6, label=f"DyT {variant}" if mark else None, **mark)
                xs, ys = run.series("val_loss")
                if ys:
                    ax.plot(xs, ys, color=color, lw=1.4, ls="--", **(mark or dict(marker="o", ms=4)))
            if len(variants) > 1:
                ax.legend(frameon=False, fontsize=7, title="train curves", title_fontsize=7)
            ax.set_title(label or dataset)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("cross-entropy (nats / token)")
        norms = sorted({r.norm for r in group})
        fig.legend(handles=_norm_handles(plt, norms, {"train": {"lw": 1.6}, "validation": {"ls": "--", "marker": "o"}}),
                   loc="upper center", ncol=4, frameon=False, bbox_to_anchor=(0.5, 1.0))
        fig.suptitle(f"Train and validation loss, LayerNorm vs DyT: {dataset}", y=1.06, fontsize=11)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"loss_{_slug(dataset)}.png"))
    return written


def _line_per_run(runs: list[Run], path: Path, metric: str, x: str, title: str, xlabel: str, ylabel: str,
                  log_y: bool | None = None) -> Path | None:
    fig = line_figure(runs, metric, x, title, xlabel, ylabel, log_y)
    return None if fig is None else _save(fig, path)


def line_figure(runs: list[Run], metric: str, x: str, title: str, xlabel: str, ylabel: str,
                log_y: bool | None = None) -> Figure | None:
    """One panel per dataset, one line per run: colour = norm, line style / marker = setting; y scale by `y_scale`
    (`log_y` None: chosen from the data). None when no run has the metric."""
    from dytune.experiments.runs import is_dyt_only

    plt = _plt()
    keys = varying(runs, exclude=("norm", "dataset"))
    shared = [k for k in keys if not is_dyt_only(k)]  # a DyT run and its LayerNorm twin share a line style
    runs = ordered(runs)
    groups = {d: g for d, g in _by_dataset(runs).items() if any(r.series(metric, x)[1] for r in g)}
    if not groups:
        return None
    fig, axes = _grid(plt, len(groups))
    style = {label: i for i, label in enumerate(dict.fromkeys(setting_label(r, shared) for r in runs
                                                              if r.series(metric, x)[1]))}
    for ax, (dataset, group) in zip(axes, groups.items()):
        plotted: list[float] = []
        for run in group:
            xs, ys = run.series(metric, x)
            if not ys:
                continue
            i = style[setting_label(run, shared)]
            setting = setting_label(run, keys)
            ax.plot(xs, ys, color=COLORS.get(run.norm, "#555555"), ls=LINESTYLES[i % len(LINESTYLES)],
                    marker=MARKERS[i % len(MARKERS)] if len(ys) <= 30 else None, ms=4, lw=1.4,
                    label=f"{NORM_LABELS.get(run.norm, run.norm)}" + (f" ({setting})" if setting else ""))
            plotted += ys
        y_scale(ax, plotted, log_y)
        ax.set_title(dataset)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        handles, names = ax.get_legend_handles_labels()
        if len(names) <= 8:
            ax.legend(frameon=False)
        else:
            ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def perplexity_per_epoch(runs: list[Run], path: Path) -> Path | None:
    has_epoch = any(r.series("val_ppl", "epoch")[1] for r in runs)
    x = "epoch" if has_epoch else "step"
    return _line_per_run(runs, path, "val_ppl", x, "Validation perplexity, LayerNorm vs DyT",
                         "epoch" if has_epoch else "optimizer step", "validation perplexity")


def grad_norms(runs: list[Run], path: Path) -> Path | None:
    return _line_per_run(runs, path, "grad_norm", "step", "Gradient norm (before clipping), LayerNorm vs DyT",
                         "optimizer step", "gradient L2 norm", log_y=None)


def learning_rates(runs: list[Run], path: Path) -> Path | None:
    return _line_per_run(runs, path, "lr", "step", "Learning rate schedule", "optimizer step", "learning rate",
                         log_y=False)


def alpha_trajectories(runs: list[Run], path: Path, max_runs: int = 12) -> Path | None:
    """One panel per DyT run: alpha of every DyT layer against steps, coloured by depth."""
    fig = alpha_figure(runs, max_runs)
    return None if fig is None else _save(fig, path)


def alpha_figure(runs: list[Run], max_runs: int = 12) -> Figure | None:
    """The figure of `alpha_trajectories`, unsaved (None when no run has alphas)."""
    plt = _plt()
    import matplotlib
    from matplotlib import cm
    from matplotlib.colors import Normalize

    dyt = [r for r in ordered(runs) if r.alpha_series()][:max_runs]
    if not dyt:
        return None
    keys = varying(runs, exclude=("norm",))
    ncols = min(3, len(dyt))
    nrows = math.ceil(len(dyt) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.6 * ncols + 1.2, 3.3 * nrows + 0.6), squeeze=False,
                             layout="constrained")
    for ax in grid.flat[len(dyt):]:
        ax.set_visible(False)
    axes = list(grid.flat[:len(dyt)])
    cmap = matplotlib.colormaps["viridis"]
    for ax, run in zip(axes, dyt):
        series = run.alpha_series()
        for i, (layer, (xs, ys)) in enumerate(series.items()):  # colour = relative depth, 0 first .. 1 last
            ax.plot(xs, ys, color=cmap(i / max(1, len(series) - 1)), lw=1.0, marker="o" if len(xs) <= 3 else None,
                    ms=3)
        # alphas of one model can span three decades (massive activations), and some cross zero in training
        y_scale(ax, [v for _, ys in series.values() for v in ys])
        ax.set_title(setting_label(run, keys) or run.name)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("alpha (mean over channels)")
    sm = cm.ScalarMappable(cmap=cmap, norm=Normalize(0, 1))
    bar = fig.colorbar(sm, ax=axes, label="DyT layer depth", shrink=0.8, aspect=30)
    bar.set_ticks([0, 1], labels=["first", "last"])
    fig.suptitle("DyT alpha per layer during training", fontsize=11)
    return fig


def gap_vs_size(points: list[dict], path: Path) -> Path | None:
    """points: {group, parameters, gap (one per seed)}; mean gap per size, one line per group."""
    plt = _plt()
    pts = [p for p in points if p.get("parameters") and p.get("gap") is not None]
    if not pts:
        return None
    groups: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in pts:
        groups[p["group"]][p["parameters"]].append(p["gap"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (group, sizes) in enumerate(sorted(groups.items())):
        color = GROUP_COLORS[i % len(GROUP_COLORS)]
        xs = sorted(sizes)
        ax.plot(xs, [sum(sizes[x]) / len(sizes[x]) for x in xs], color=color, marker=MARKERS[i % len(MARKERS)],
                lw=1.6, label=group)
        for x in xs:
            if len(sizes[x]) > 1:
                ax.scatter([x] * len(sizes[x]), sizes[x], color=color, s=10, alpha=0.5)
    ax.axhline(0, color="black", lw=0.8, ls="--")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter

    from matplotlib.ticker import FixedLocator, NullLocator

    sizes = sorted({p["parameters"] for p in pts})
    ax.xaxis.set_major_locator(FixedLocator(sizes))  # ticks at the models' own sizes
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:.0f}M" if v >= 1e6 else f"{v / 1e3:.0f}k"))
    if len(sizes) == 1:
        ax.set_xlim(sizes[0] / 2, sizes[0] * 2)
    ax.set_xlabel("model parameters (log scale)")
    ax.set_ylabel("DyT - LayerNorm validation loss (nats)")
    ax.set_title("Does the DyT gap shrink with scale? (> 0: DyT worse)")
    ax.legend(frameon=False, title="dataset, setting", loc="best")
    fig.tight_layout()
    return _save(fig, path)


def ce_bars(rows: list[tuple[str, float, str]], path: Path, title: str) -> Path:
    """Horizontal bars of held-out cross-entropy: (label, value, colour key)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 0.55 * len(rows) + 1.4))
    ys = list(range(len(rows)))[::-1]
    ax.barh(ys, [v for _, v, _ in rows], color=[COLORS.get(c, c) for _, _, c in rows], height=0.6)
    for y, (_, v, _) in zip(ys, rows):
        ax.text(v, y, f" {v:.3f}", va="center", fontsize=9)
    ax.set_yticks(ys, [label for label, _, _ in rows])
    ax.set_xlabel("held-out cross-entropy (nats / assistant token, lower is better)")
    ax.set_xlim(0, max(v for _, v, _ in rows) * 1.18)
    ax.set_title(title)
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return _save(fig, path)
