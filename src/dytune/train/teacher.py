"""The distillation teacher: the original model, without a second copy where the weights are frozen anyway.

In `lora`, `lora+dyt` and `dyt-only` the base weights never change, so the teacher is the student itself with
the original norms put back in place of the DyT layers and the LoRA adapters disabled. "Put back" is done with
forward hooks on the DyT sites (the hook returns the original norm's output) rather than by swapping modules:
the model's state dict, its PEFT wrappers and its optimizer never see a change, and a checkpoint written at any
moment is the student. The same hooks give progressive conversion (sites not yet converted keep the original
norm). In `full` mode, where every weight trains, the teacher is a frozen copy.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from dytune._blocks import find_blocks, unwrap
from dytune.errors import DytuneError


def run_original(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A kept original norm on a site's input (moved to the input's device first), in the input's dtype."""
    param = next(norm.parameters(), None)
    if param is not None and param.device != x.device:
        norm.to(x.device)
    return norm(x).to(x.dtype)


class OriginalNorms:
    """Original norm layers kept beside a model, and the switch that makes chosen sites use them."""

    def __init__(self, originals: dict[str, nn.Module]) -> None:
        self.originals = originals
        for norm in originals.values():
            norm.requires_grad_(False)
            norm.eval()

    @classmethod
    def from_converted(cls, model: nn.Module) -> OriginalNorms:
        """The norms `dytune.convert` replaced in `model` (converted in this process)."""
        from dytune.conversion.model import conversion_of

        return cls(dict(conversion_of(model).originals))

    @classmethod
    def snapshot(cls, model: nn.Module, names: Iterable[str]) -> OriginalNorms:
        """Frozen copies of norm modules that are about to train (the LayerNorm twin's teacher)."""
        return cls({name: copy.deepcopy(model.get_submodule(name)) for name in names})

    @property
    def names(self) -> list[str]:
        return list(self.originals)

    def _hook(self, name: str):  # noqa: ANN202
        norm = self.originals[name]

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            return run_original(norm, args[0])

        return hook

    def install(self, model: nn.Module, names: Iterable[str]) -> list:
        """Make the sites `names` compute the original norm; returns hook handles (call `.remove()`)."""
        base = unwrap(model)
        handles = []
        for name in names:
            if name not in self.originals:
                raise DytuneError(f"no original norm kept for {name}")
            handles.append(base.get_submodule(name).register_forward_hook(self._hook(name)))
        return handles

    @contextlib.contextmanager
    def teacher(self, model: nn.Module) -> Iterator[nn.Module]:
        """`model` as the original model: every site on its original norm, adapters off, eval mode."""
        base = unwrap(model)
        peft = getattr(model, "module", model)
        handles = self.install(model, self.originals)
        was_training = base.training
        base.eval()
        disable = peft.disable_adapter() if hasattr(peft, "disable_adapter") else contextlib.nullcontext()
        try:
            with disable:
                yield peft
        finally:
            for handle in handles:
                handle.remove()
            base.train(was_training)


class FrozenTeacher:
    """A separate frozen model (full mode, or an explicit `teacher:`)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        self.model.requires_grad_(False)

    def cast(self, dtype: torch.dtype) -> None:
        """Keep the teacher's weights in `dtype` (bf16 runs: it never trains, and autocast would re-cast every
        frozen weight at every forward, since its cast cache keeps only weights that require grad)."""
        self.model.to(dtype)

    def shard(self, device: torch.device) -> None:
        """Under FSDP2, shard the teacher like the student (each block, then the root) so that no process holds
        a whole second model. Unverified on GPUs so far."""
        from torch.distributed.fsdp import fully_shard

        self.model.to(device)
        _, blocks = find_blocks(self.model)
        for block in blocks:
            fully_shard(block)
        fully_shard(self.model)

    @contextlib.contextmanager
    def teacher(self, student: nn.Module) -> Iterator[nn.Module]:
        param = next(student.parameters())
        first = next(self.model.parameters())
        if first.device != param.device and not hasattr(first, "device_mesh"):
            self.model.to(param.device)
        yield self.model
