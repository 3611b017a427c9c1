"""Gradual norm removal during training: each converted site computes `g * Norm(x) + (1 - g) * DyT(x)`.

The gate `g` of a group of sites ramps from 1 (the original norm) to 0 (pure DyT) over `ramp_steps` optimizer
steps, then the group is held at 0 for `hold_steps` while the next group waits at 1. Groups follow an order:

    all     every site in one group (a single ramp)
    depth   shallow to deep, in forward order
    fakeln  by kind, as the published LayerNorm removals from GPT-2 did it (Heimersheim 2024; Baroni et al.
            2025): MLP-input norms first, then attention inputs, then sandwich/post norms, then the final norm

The gate is a forward hook on each DyT site (its output is mixed with the kept original norm's; after a
conversion that changed linear layers, on the layers that read the site: `NormGates`), so the
model's state dict, PEFT wrappers and optimizer never see it: a checkpoint written at any step is the DyT
student, the schedule is a function of the step (resume needs nothing saved), and once every gate reaches 0
no hook is left and the model holds no norm.
"""

from __future__ import annotations

import copy
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
    """Forward hooks that mix each gated DyT site's output with its original norm's: `g*Norm(x) + (1 - g)*DyT(x)`.

    `originals` maps site names to the norm modules they replaced (frozen). `set(model, gates)` installs,
    updates or removes hooks so that exactly the sites in `gates` are mixed, with those weights.

    A conversion that also changed linear layers (`calibration_refit: linear`) gives no weights in which the
    norm's output means what it meant: there the mixing moves one layer down (`from_original` finds where).
    `rerouted[site]` holds the original model's consumers of the site (q/k/v, gate/up, the LM head) and its
    sub-layer's output projection, each beside the student's module of the same name; the gated student
    module's output becomes `g * original_module(input) + (1 - g) * output`, the consumers reading the original
    norm's output. At g = 1 that is the original model whatever the student's weights are; at 0, the student.
    """

    def __init__(self, originals: dict[str, nn.Module],
                 rerouted: dict[str, list[tuple[str, nn.Module, bool]]] | None = None) -> None:
        self.originals = originals
        self.rerouted = dict(rerouted or {})  # site -> [(student module name, original module, reads the norm)]
        self._weights: dict[str, float] = {}
        self._normed: dict[str, torch.Tensor] = {}  # a rerouted site's original-norm output, for its consumers
        self._handles: dict[str, list[torch.utils.hooks.RemovableHandle]] = {}

    @classmethod
    @torch.no_grad()
    def from_original(cls, student: nn.Module, original: nn.Module, names: list[str]) -> NormGates:
        """Gates for a DyT `student` whose norms are not kept beside it (converted with a linear refit, or in
        another process), from the `original` model with the same module names (the distillation teacher,
        whose modules the gates then share: they are frozen)."""
        from dytune.conversion.init.refit import linear_weight_in_out, trace_consumers
        from dytune.hf_registration import site_kinds

        student_names = {module: name for name, module in student.named_modules()}
        sites = {name: student.get_submodule(name) for name in names}
        vocab = student.get_input_embeddings().weight.shape[0]
        traced = trace_consumers(student, sites, lambda: student(input_ids=torch.arange(8).remainder(vocab)[None]))
        head = student.get_output_embeddings()
        kinds = site_kinds(student.config)

        def theirs(module: nn.Module) -> nn.Module:
            name = student_names[module]
            try:
                return original.get_submodule(name)
            except AttributeError:
                raise DytuneError(f"gradual removal: the original model has no module {name}") from None

        def changed(module: nn.Module) -> bool:
            return not torch.equal(linear_weight_in_out(module), linear_weight_in_out(theirs(module)))

        originals, rerouted = {}, {}
        for name in names:
            originals[name] = copy.deepcopy(theirs(sites[name])).float()
            consumers, out_proj = traced[name]
            if not consumers and head is not None and kinds.get(name) == "final":
                consumers = [head]  # the final norm feeds the LM head through a slice, which the trace misses
            if any(changed(m) for m in consumers):
                rerouted[name] = [(student_names[m], theirs(m), True) for m in consumers]
                if out_proj is not None and changed(out_proj):
                    rerouted[name].append((student_names[out_proj], theirs(out_proj), False))
        return cls(originals, rerouted)

    def _site_hook(self, name: str):  # noqa: ANN202
        norm, rerouted = self.originals[name], name in self.rerouted

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            kept = run_original(norm, args[0])
            if rerouted:  # the consumers mix instead (see the class docstring)
                self._normed[name] = kept
                return output
            g = self._weights[name]
            return (g * kept.float() + (1.0 - g) * output.float()).to(output.dtype)

        return hook

    def _module_hook(self, name: str, theirs: nn.Module, reads_norm: bool):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            if reads_norm:
                normed = self._normed[name]
                x = normed[..., normed.shape[-2] - x.shape[-2]:, :]  # the LM head may read the last positions only
            out = run_original(theirs, x.to(theirs.weight.dtype)).float()  # the teacher's layer may be bf16
            g = self._weights[name]
            return (g * out + (1.0 - g) * output.float()).to(output.dtype)

        return hook

    def set(self, model: nn.Module, gates: dict[str, float]) -> None:
        base = unwrap(model)
        for name in list(self._handles):
            if name not in gates:
                for handle in self._handles.pop(name):
                    handle.remove()
                self._normed.pop(name, None)
        missing = [name for name in gates if name not in self.originals]
        if missing:
            raise DytuneError(f"gradual removal needs the original norm of {missing[0]} (and {len(missing) - 1} more)")
        self._weights = dict(gates)
        for name in gates:
            if name not in self._handles:
                handles = [base.get_submodule(name).register_forward_hook(self._site_hook(name))]
                for module_name, theirs, reads_norm in self.rerouted.get(name, []):
                    handles.append(base.get_submodule(module_name).register_forward_hook(
                        self._module_hook(name, theirs, reads_norm)))
                self._handles[name] = handles

    def clear(self) -> None:
        for handles in self._handles.values():
            for handle in handles:
                handle.remove()
        self._handles = {}
        self._weights = {}
        self._normed = {}

    @property
    def mean_gate(self) -> float:
        return sum(self._weights.values()) / len(self.originals) if self.originals else 0.0
