"""Trainer callbacks: `metrics.jsonl` in the run directory (TensorBoard/W&B come from `report_to`), and the console
log, which shows a summary of the per-layer alphas instead of one value per DyT layer."""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from dytune._jsonio import read_jsonl


class MetricsJsonl(TrainerCallback):
    """Append every log (train loss, grad norm, lr, tokens/s, alpha per layer, validation loss/ppl) as one JSON line.

    On resume, lines past the checkpoint's step are dropped first (`truncate_after`), so the file holds one
    consistent curve, as if the run had never stopped.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @staticmethod
    def truncate_after(path: str | Path, step: int) -> None:
        path = Path(path)
        if not path.is_file():
            return
        kept = [row for row in read_metrics(path) if row.get("step", 0) <= step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
        tmp.replace(path)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "time": time.time()}
        for key, value in logs.items():
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)  # JSON has no NaN; keep it visible
            row[key] = value
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a `metrics.jsonl` (a torn last line, from a run killed mid-write, is skipped)."""
    return read_jsonl(path)


class TokenBudget(TrainerCallback):
    """Stop training once `budget` training tokens (non-padding) have been seen (`TrainConfig.max_train_tokens`)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.num_input_tokens_seen >= self.budget:
            control.should_training_stop = True


ALPHA_PREFIX = "alpha/"  # DytuneTrainer.log adds one `alpha/<layer>` key per DyT layer to every training log


def summarize_alphas(logs: dict) -> dict:
    """`logs` with its `alpha/<layer>` keys replaced, where the first of them stood, by `alpha_min`,
    `alpha_median`, `alpha_max` and `alpha_layers` (plus `alpha_nonfinite` when some alpha is NaN/Inf, which the
    three statistics leave out). A new dict: the other callbacks (metrics.jsonl, TensorBoard) keep every layer."""
    alphas = [v for k, v in logs.items() if k.startswith(ALPHA_PREFIX)]
    if not alphas:
        return dict(logs)
    finite = [float(v) for v in alphas if math.isfinite(v)]
    summary: dict[str, Any] = {}
    if finite:
        summary = {"alpha_min": min(finite), "alpha_median": statistics.median(finite), "alpha_max": max(finite)}
    summary["alpha_layers"] = len(alphas)
    if len(finite) < len(alphas):
        summary["alpha_nonfinite"] = len(alphas) - len(finite)
    out: dict = {}
    for key, value in logs.items():
        if not key.startswith(ALPHA_PREFIX):
            out[key] = value
        elif summary:
            out.update(summary)
            summary = {}
    return out


class AlphaSummaryProgress(ProgressCallback):
    """HF's progress bar, whose log lines summarise the alphas (`summarize_alphas`)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        super().on_log(args, state, control, logs=summarize_alphas(logs or {}), **kwargs)


class AlphaSummaryPrinter(PrinterCallback):
    """HF's plain log printer (`disable_tqdm`), with the alphas summarised (`summarize_alphas`)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        super().on_log(args, state, control, logs=summarize_alphas(logs or {}), **kwargs)


def summarize_alphas_on_console(trainer: Any) -> None:
    """Swap the Trainer's console callback (ProgressCallback, or PrinterCallback with `disable_tqdm`) for its
    alpha-summarising subclass; other consoles (a notebook's table) are left as they are."""
    for hf, ours in ((ProgressCallback, AlphaSummaryProgress), (PrinterCallback, AlphaSummaryPrinter)):
        if trainer.pop_callback(hf) is not None:
            trainer.add_callback(ours)
