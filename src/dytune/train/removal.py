"""Gradual norm removal during training: each converted site computes `g * Norm(x) + (1 - g) * DyT(x)`.

The gate `g` of a group of sites ramps from 1 (the original norm) to 0 (pure DyT) over `ramp_steps` optimizer
steps, then the group is held at 0 for `hold_steps` while the next group waits at 1. Groups follow an order:

    all     every site in one group (a single ramp)
    depth   shallow to deep, in forward order
    fakeln  by kind, as the published LayerNorm removals from GPT-2 did it (Heimersheim 2024; Baroni et al.
            2025): MLP-input norms first, then attention inputs, then sandwich/post norms, then the final norm

The gate is a forward hook on each DyT site (its output is mixed with the kept original norm's), so the
model's state dict, PEFT wrappers and optimizer never see it: a checkpoint written at any step is the DyT
student, the schedule is a function of the step (resume needs nothing saved), and once every gate reaches 0
no hook is left and the model holds no norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dytune._blocks import unwrap
from dytune.errors import DytuneError
from dytune.train.teacher import run_original

ORDERS = ("all", "depth", "fakeln")
SHAPES = ("linear", "cosine")
# fakeln order: kinds removed first come first; kinds not listed go last, in forward order
_FAKELN_KIND_ORDER = ("ffn", "attn", "qk", "post", "embed", "final")


@dataclass(frozen=True)
class RemovalSchedule:
    """Which sites are gated at which step. `names`/`kinds`: the converted sites in forward order."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    order: str = "all"
    groups: int = 1
    ramp_steps: int = 0
    hold_steps: int = 0
    shape: str = "linear"

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise DytuneError(f"removal_order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if self.shape not in SHAPES:
            raise DytuneError(f"removal_shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        if self.groups < 1 or self.ramp_steps < 0 or self.hold_steps < 0:
            raise DytuneError("removal_groups must be >= 1 and removal_ramp_steps / removal_hold_steps >= 0")
        if len(self.names) != len(self.kinds):
            raise DytuneError("RemovalSchedule needs one kind per site name")

    @property
    def active(self) -> bool:
        """False for the default (every norm replaced before the first step): no gate at all."""
        return self.ramp_steps > 0 or self.hold_steps > 0

    def site_groups(self) -> list[list[str]]:
        """The groups of site names, in removal order."""
        names = list(self.names)
        if self.order == "all":
            return [names]
        if self.order == "fakeln":
            rank = {kind: i for i, kind in enumerate(_FAKELN_KIND_ORDER)}
            by_kind: dict[str, list[str]] = {}
            for name, kind in zip(self.names, self.kinds):
                by_kind.setdefault(kind, []).append(name)
            kind_groups = [by_kind[k] for k in sorted(by_kind, key=lambda k: rank.get(k, len(rank)))]
            # `groups` beyond the number of kinds split each kind by depth into equal parts
            parts = max(1, -(-self.groups // len(kind_groups)))
            return [chunk for group in kind_groups for chunk in _split(group, parts)]
        return _split(names, self.groups)

    @property
    def steps_per_group(self) -> int:
        return self.ramp_steps + self.hold_steps

    @property
    def total_steps(self) -> int:
        """Steps until the last gate is 0 (and its hold is over)."""
        return len(self.site_groups()) * self.steps_per_group if self.active else 0

    def gate(self, group_index: int, step: int) -> float:
        """g of group `group_index` at optimizer step `step` (1 = original norm, 0 = DyT)."""
        start = group_index * self.steps_per_group
        if step < start:
            return 1.0
        if self.ramp_steps == 0 or step >= start + self.ramp_steps:
            return 0.0
        t = (step - start) / self.ramp_steps
        return 1.0 - t if self.shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))

    def gates(self, step: int) -> dict[str, float]:
        """g for every site at `step`; sites at 0 are omitted (they need no hook)."""
        if not self.active:
            return {}
        out = {}
        for i, group in enumerate(self.site_groups()):
            g = self.gate(i, step)
            if g > 0:
                out.update(dict.fromkeys(group, g))
        return out


def _split(names: list[str], parts: int) -> list[list[str]]:
    """Contiguous, near-equal chunks (shallowest first)."""
    parts = max(1, min(parts, len(names)))
    size, extra = divmod(len(names), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        chunks.append(names[start:end])
        start = end
    return chunks


class NormGates:
    """Forward hooks that mix each gated DyT site's output with its original norm's: `g*Norm(x) + (1-g)*DyT(x)`.

    `originals` maps site names to the norm modules they replaced (frozen). `set(model, gates)` installs,
    updates or removes hooks so that exactly the sites in `gates` are mixed, with those weights.
    """

    def __init__(self, originals: dict[str, nn.Module]) -> None:
        self.originals = originals
        self._weights: dict[str, float] = {}
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {}

    def _hook(self, name: str):  # noqa: ANN202
        norm = self.originals[name]

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            g = self._weights[name]
            return (g * run_original(norm, args[0]).float() + (1.0 - g) * output.float()).to(output.dtype)

        return hook

    def set(self, model: nn.Module, gates: dict[str, float]) -> None:
        base = unwrap(model)
        for name in list(self._handles):
            if name not in gates:
                self._handles.pop(name).remove()
        missing = [name for name in gates if name not in self.originals]
        if missing:
            raise DytuneError(f"gradual removal needs the original norm of {missing[0]} (and {len(missing) - 1} more)")
        self._weights = dict(gates)
        for name in gates:
            if name not in self._handles:
                self._handles[name] = base.get_submodule(name).register_forward_hook(self._hook(name))

    def clear(self) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles = {}
        self._weights = {}

    @property
    def mean_gate(self) -> float:
        return sum(self._weights.values()) / len(self.originals) if self.originals else 0.0
