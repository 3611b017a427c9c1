"""Trainer callbacks: `metrics.jsonl` in the run directory (TensorBoard/W&B come from `report_to`)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

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
