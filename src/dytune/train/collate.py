"""Batching for tokenized conversations: right padding, -100 labels on padding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

COLUMNS = ("input_ids", "attention_mask", "labels", "position_ids")


@dataclass
class PadCollator:
    pad_id: int = 0
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        fill = {"input_ids": self.pad_id, "attention_mask": 0, "labels": -100, "position_ids": 0}
        batch = {}
        for key in COLUMNS:
            if key not in rows[0]:
                continue
            out = torch.full((len(rows), width), fill[key], dtype=torch.long)  # (B, T)
            for i, row in enumerate(rows):
                values = row[key]
                out[i, :len(values)] = torch.as_tensor(values, dtype=torch.long)
            batch[key] = out
        if "attention_mask" not in batch:
            lengths = torch.tensor([len(r["input_ids"]) for r in rows])
            batch["attention_mask"] = (torch.arange(width)[None, :] < lengths[:, None]).long()
        return batch
