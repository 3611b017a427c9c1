"""Decoder-block helpers shared by calibration, block-wise distillation, the teacher and norm discovery: find the
blocks, see through DDP / PEFT wrappers, and record what modules are called with (and return) in a forward pass."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import nn

from dytune.errors import DytuneError


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a DDP and/or PEFT wrapper."""
    model = getattr(model, "module", model)  # DDP
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted name, ModuleList) of the decoder blocks: the list with `num_hidden_layers` entries (else the longest)."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise DytuneError(f"{type(model).__name__} has no list of transformer blocks (nn.ModuleList)")
    exact = [item for item in lists if len(item[1]) == n_layers]
    return (exact or sorted(lists, key=lambda item: len(item[1])))[-1 if not exact else 0]


def layer_index(name: str, blocks_prefix: str) -> int | None:
    """The block index of a module named `name` (None outside the blocks)."""
    prefix = blocks_prefix + "."
    if not name.startswith(prefix):
        return None
    return int(name[len(prefix):].split(".")[0])


@dataclass
class Call:
    """One call of a module: its positional and keyword arguments and (once it returned) its output."""

    args: tuple
    kwargs: dict
    output: Any = None

    @property
    def first_input(self) -> Any:
        return self.args[0] if self.args else self.kwargs.get("hidden_states")


class StopForward(Exception):
    """Raised by `record_calls(..., stop=True)` once every watched module has been called (see there)."""


@contextmanager
def record_calls(modules: Sequence[nn.Module], *, outputs: bool = True, stop: bool = False,
                 ) -> Iterator[list[list[Call]]]:
    """Record every call of each module while the block runs: `calls[i]` lists module i's calls in order.

    `outputs=False` keeps inputs only; `stop=True` raises `StopForward` once a call is recorded: right after its
    input (the GPTQ "catcher": the inputs of the first block without running the rest of the model), or with
    `outputs=True` right after its output. With several modules, it stops once every one has been called."""
    calls: list[list[Call]] = [[] for _ in modules]
    handles = []
    pending = set(range(len(modules)))  # modules not yet called in this forward (for stop)

    def maybe_stop(i: int) -> None:
        pending.discard(i)
        if stop and not pending:
            pending.update(range(len(modules)))  # ready for the next forward
            raise StopForward

    for i, module in enumerate(modules):
        def before(mod: nn.Module, args: tuple, kwargs: dict, i: int = i) -> None:
            calls[i].append(Call(args, kwargs))
            if not outputs:
                maybe_stop(i)

        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        if outputs:
            def after(mod: nn.Module, args: tuple, output: Any, i: int = i) -> None:
                calls[i][-1].output = output
                maybe_stop(i)

            handles.append(module.register_forward_hook(after))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()
