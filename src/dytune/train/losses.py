"""The one loss path every mode shares: CE on labelled tokens + lambda * KL(teacher || student) (+ hidden match).

Shapes: logits (B, T, V), labels (B, T) with -100 where no loss is taken, attention_mask (B, T).
Position t predicts token t+1, so every term works on positions [:-1] against targets [1:].
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def causal_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL over labelled next-token targets, number of them)."""
    target = labels[:, 1:]  # (B, T-1)
    nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                          ignore_index=-100, reduction="sum")
    return nll, (target != -100).sum()


def kl_teacher_student(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """Mean over masked positions of KL(p_teacher || p_student) at `temperature`, times T^2 (Hinton's scaling,
    so the gradient size does not depend on T). `mask` (B, T-1) selects the predicting positions."""
    t = temperature
    s = F.log_softmax(student_logits[:, :-1].float() / t, dim=-1)  # (B, T-1, V)
    with torch.no_grad():
        p_log = F.log_softmax(teacher_logits[:, :-1].float() / t, dim=-1)
    kl = (p_log.exp() * (p_log - s)).sum(-1)  # (B, T-1)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1) * (t * t)


def token_nmse(student: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, sink_weight: float = 1.0
               ) -> torch.Tensor:
    """Mean over real tokens of ||s - t||^2 / ||t||^2 (position 0 weighted by `sink_weight`): each token counts
    once, so the attention sink (activations ~100x the median) does not dominate."""
    err = (student.float() - target.float()).pow(2).sum(-1)
    ref = target.float().pow(2).sum(-1).clamp_min(1e-6)
    weight = mask.to(torch.float32)
    if sink_weight != 1.0:
        weight = weight.clone()
        weight[:, 0] *= sink_weight
    return (err / ref * weight).sum() / weight.sum().clamp_min(1e-6)


def hidden_match(student_hidden: tuple[torch.Tensor, ...], teacher_hidden: tuple[torch.Tensor, ...],
                 mask: torch.Tensor) -> torch.Tensor:
    """Mean over blocks of the per-token normalised MSE (`token_nmse`) between the student's and the teacher's
    block outputs. `mask` (B, T) selects real tokens. HF's `hidden_states` are the embedding output, then each
    block's output, the last one after the final norm: both ends are left out (the embedding output is identical,
    and a linear refit fits the LM head to the final DyT's own output, not to the original norm's)."""
    pairs = list(zip(student_hidden[1:-1], teacher_hidden[1:-1]))
    if not pairs:
        raise ValueError("hidden-state matching needs at least two blocks")
    return torch.stack([token_nmse(hs, ht, mask) for hs, ht in pairs]).mean()


@dataclass
class LossParts:
    total: torch.Tensor
    ce: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


class CompiledLoss:
    """A loss function under `torch.compile` (dynamic shapes), eager if compiling fails. CE and KL over a large
    vocabulary are a chain of memory-bound passes over (B, T, V) float32 tensors, which inductor fuses (measured
    in docs/recovery.md)."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self._compiled: Callable | None = None
        self._failed = False

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        if self._failed:
            return self.fn(*args, **kwargs)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=True)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - e.g. no C++ compiler for inductor
            warnings.warn(f"dytune: compiling {self.fn.__name__} failed ({type(err).__name__}: {err}); using it "
                          "eagerly (set compile_loss: false to skip the attempt)", stacklevel=2)
            self._failed = True
            return self.fn(*args, **kwargs)
