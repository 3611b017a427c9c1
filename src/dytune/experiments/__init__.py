"""Experiments: the study a user came for, from run directories to a report.

    runs     read a run directory (config, metrics.jsonl, summary.json, eval/judge/bench results) into a `Run`
    plots    matplotlib figures: losses, perplexity per epoch, grad norms, alpha trajectories, gap vs size
    report   Markdown + static HTML comparison report (`dytune report RUN_DIR... --out DIR`)
    grid     sweep files: grid expansion (any config key), deterministic run names
    sweep    run a grid one run after another, skip finished runs, isolate failures (`dytune sweep GRID.yaml`)
    demo     `dytune demo`: convert the embedded model, recover by distillation, compare, report

Names below load their module on first use, so `import dytune.experiments` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Run": "runs", "load_run": "runs", "find_runs": "runs",
    "build_report": "report",
    "expand_grid": "grid", "load_grid": "grid", "RunSpec": "grid",
    "run_sweep": "sweep",
    "run_demo": "demo", "DemoSettings": "demo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dytune.experiments.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dytune.experiments' has no attribute {name!r}")
