"""`RunSummary`: what `summary.json` in a run directory holds (written last by `dytune train`; read by reports)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dytune._jsonio import read_json, write_json


@dataclass
class RunSummary:
    status: str = "running"  # running | completed | stopped: non-finite
    run_dir: str = ""
    model: str = ""
    norm: str = "dyt"
    mode: str = ""
    distill: bool = False
    resumed_from: str | None = None
    world_size: int = 1
    global_step: int = 0
    train_tokens: int = 0  # non-padding training tokens seen (block-wise distillation's are in local_distill)
    train_loss: float | None = None
    train_runtime_s: float | None = None
    tokens_per_second: float | None = None
    skipped_steps: int = 0
    num_parameters: int | None = None  # of the final model
    trainable_parameters: dict[str, int] = field(default_factory=dict)
    final_eval: dict[str, Any] = field(default_factory=dict)  # Trainer.evaluate() at the end: eval_loss, eval_ppl, ...
    alpha: dict[str, float] = field(default_factory=dict)
    conversion: dict | None = None  # {"alpha_init", "layers"} when the run converted the model
    local_distill: dict | None = None  # the block-wise stage: steps, tokens, nmse_first/last, ...
    reconstruction: dict | None = None  # block reconstruction: tokens, per-block nmse before/after (or skipped)
    eos_token_id: Any = None
    final: str | None = None
    adapter: str | None = None
    base: str | None = None
    wall_time_s: float | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == "completed"

    @property
    def val_loss(self) -> float | None:
        return _finite(self.final_eval.get("eval_loss"))

    @property
    def val_ppl(self) -> float | None:
        ppl = _finite(self.final_eval.get("eval_ppl"))
        loss = self.val_loss
        return ppl if ppl is not None else (math.exp(loss) if loss is not None and loss < 50 else None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, run_dir: str | Path) -> None:
        write_json(Path(run_dir) / "summary.json", self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def read(cls, run_dir: str | Path) -> RunSummary | None:
        """The summary of a run directory; None if it has none (the run has not ended) or it does not parse."""
        data = read_json(Path(run_dir) / "summary.json")
        return None if data is None else cls.from_dict(data)


def _finite(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None
