"""Sequential block reconstruction: fit each converted block, in order, on the student's own inputs.

GPTQ and EfficientQAT's Block-AP repair error that accumulates over depth this way: block `l` of the student
is trained on what the already reconstructed student blocks `0..l-1` really feed it, towards what the
original block `l` outputs on the original model's input. Unlike `dytune.train.local` (which feeds every block
the *teacher's* input and trains only DyT parameters), a block here learns to undo the drift that reaches it.

Per block: AdamW on every weight of the block (and its DyT parameters), a cosine schedule, tight gradient
clipping, and a per-token normalised MSE (each token's squared error over its target's squared norm, so the
attention sink, whose activations are ~100x the median, counts as one token; `sink_weight` weighs position 0
on top). The final norm is fitted the same way on its own input, unless a linear refit fitted the LM head to the
DyT's own output (the original norm's output is then not what the head expects); an embedding norm (before the
first block) is left to end-to-end training.

Memory: the activations of the cached batches are held in memory, three float32 copies of the hidden state
per token (the student's input, the original's input and the original block's output) plus each batch's
attention mask and rotary tables: `bytes_per_token` reports it (SmolLM2-135M: 3 x 576 x 4 = 6.9 kB, so about
3M tokens fit in 24 GiB beside the model).
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from dytune._blocks import StopForward, find_blocks, record_calls, unwrap
from dytune.dyt import DyT
from dytune.train.losses import token_nmse
from dytune.train.teacher import FrozenTeacher, OriginalNorms


def _first(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


class _BlockCall:
    """One captured call of a block: its hidden-state input and the other arguments (mask, rotary tables)."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        self.in_kwargs = "hidden_states" in kwargs
        hidden = kwargs["hidden_states"] if self.in_kwargs else args[0]
        self.hidden = hidden.detach()
        self.args = tuple(args if self.in_kwargs else args[1:])
        self.kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        for key in ("past_key_values", "past_key_value", "layer_past"):
            self.kwargs.pop(key, None)
        self.kwargs["use_cache"] = False

    def run(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        if self.in_kwargs:
            return _first(block(*self.args, hidden_states=hidden, **self.kwargs))
        return _first(block(hidden, *self.args, **self.kwargs))


def _capture_first_block(model: nn.Module, block: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> _BlockCall:
    """The first block's input, without running the rest of the model."""
    with record_calls([block], outputs=False, stop=True) as calls:
        try:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        except StopForward:
            pass
    return _BlockCall(calls[0][0].args, calls[0][0].kwargs)


@contextmanager
def _original_block(teacher: OriginalNorms | FrozenTeacher, student: nn.Module, prefix: str, index: int,
                    blocks: nn.ModuleList) -> Iterator[nn.Module]:
    """The original block `index`: the teacher model's, or the student's own with its original norms put back
    (valid only before that block is trained, which the sequential order guarantees)."""
    if isinstance(teacher, FrozenTeacher):
        yield find_blocks(teacher.model)[1][index]
        return
    handles = teacher.install(student, [n for n in teacher.names if n.startswith(f"{prefix}.{index}.")])
    try:
        yield blocks[index]
    finally:
        for handle in handles:
            handle.remove()


def _outer_norm(teacher: OriginalNorms | FrozenTeacher, name: str) -> nn.Module:
    if isinstance(teacher, FrozenTeacher):
        return teacher.model.get_submodule(name)
    return teacher.originals[name]


def _outer_skip_reason(model: nn.Module, name: str) -> str | None:
    """Why the DyT `name` outside the blocks is not fitted to the original norm's output (None: it is)."""
    from dytune.hf_registration import site_kinds

    spec = getattr(model.config, "dyt", None) or {}
    kind = site_kinds(model.config).get(name, "final")
    if kind != "final":  # an embedding norm sits before the first block, not on the last hidden state
        return f"a {kind} norm, before the first block; end-to-end training tunes it"
    if spec.get("refit") == "linear":  # its DyT feeds an LM head refitted to it: the norm's output is no target
        return "the LM head was refitted to this DyT's output (calibration_refit: linear); end-to-end training tunes it"
    return None


def _fit(module_params: list[nn.Parameter], loss_of_batch, n_batches: int, steps: int, lr: float,
         max_grad_norm: float) -> None:
    """AdamW with a cosine schedule over `steps`, one cached batch per step."""
    optimizer = torch.optim.AdamW(module_params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    for b in itertools.islice(itertools.cycle(range(n_batches)), steps):
        loss = loss_of_batch(b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module_params, max_grad_norm)
        optimizer.step()
        schedule.step()


@torch.no_grad()
def _mean_error(run, targets: list[torch.Tensor], masks: list[torch.Tensor], sink_weight: float) -> float:
    errs = [float(token_nmse(run(b), targets[b], masks[b], sink_weight)) for b in range(len(targets))]
    return sum(errs) / len(errs)


def reconstruct_blocks(model: nn.Module, teacher: OriginalNorms | FrozenTeacher, batches: Iterable[dict], *,
                       steps_per_block: int, lr: float = 1e-4, max_grad_norm: float = 0.1,
                       sink_weight: float = 1.0, max_tokens: int | None = None, progress: bool = True) -> dict:
    """Reconstruct the student's blocks in order (see the module docstring); returns a summary with each block's
    normalised error before and after on the cached batches (`nmse_before` / `nmse_after`), or, for a norm outside
    the blocks that is left to end-to-end training, why (`skipped`).

    `batches`: dicts with input_ids and attention_mask; taken until `max_tokens` real tokens are cached.
    """
    base = unwrap(model)
    prefix, blocks = find_blocks(base)
    outer = [n for n, m in base.named_modules() if isinstance(m, DyT) and not n.startswith(prefix + ".")]
    device = next(base.parameters()).device
    was_training = base.training
    flags = {id(p): p.requires_grad for p in base.parameters()}
    start = time.perf_counter()
    base.eval()  # no dropout: targets and inputs are deterministic
    student_calls: list[_BlockCall] = []
    teacher_hidden: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    tokens = 0
    try:
        base.requires_grad_(False)
        with torch.no_grad():
            for batch in batches:
                ids = batch["input_ids"].to(device)
                mask = batch["attention_mask"].to(device)
                student_calls.append(_capture_first_block(base, blocks[0], ids, mask))
                with teacher.teacher(model) as teacher_model:
                    t_base = unwrap(teacher_model)
                    teacher_hidden.append(_capture_first_block(t_base, find_blocks(t_base)[1][0], ids, mask).hidden)
                masks.append(mask)
                tokens += int(mask.sum())
                if max_tokens is not None and tokens >= max_tokens:
                    break
        if not masks:
            raise ValueError("block reconstruction got no batches")
        student_hidden = [call.hidden for call in student_calls]
        per_block = []
        for index, block in enumerate(blocks):
            with torch.no_grad(), _original_block(teacher, model, prefix, index, blocks) as original:
                targets = [call.run(original, teacher_hidden[b]) for b, call in enumerate(student_calls)]
            params = list(block.parameters())
            before = _mean_error(lambda b: student_calls[b].run(block, student_hidden[b]), targets, masks, sink_weight)
            for p in params:
                p.requires_grad_(True)
            _fit(params, lambda b: token_nmse(student_calls[b].run(block, student_hidden[b]), targets[b], masks[b],
                                              sink_weight), len(masks), steps_per_block, lr, max_grad_norm)
            for p in params:
                p.requires_grad_(False)
            with torch.no_grad():
                student_hidden = [student_calls[b].run(block, student_hidden[b]) for b in range(len(masks))]
            after = _mean_error(lambda b: student_hidden[b], targets, masks, sink_weight)
            teacher_hidden = targets
            per_block.append({"block": index, "nmse_before": before, "nmse_after": after})
            if progress:
                print(f"  reconstructing block {index + 1}/{len(blocks)}: normalised error {before:.4g} -> "
                      f"{after:.4g}", file=sys.stderr, flush=True)
        for name in outer:  # the final norm: fitted on the student's last hidden state
            skipped = _outer_skip_reason(base, name)
            if skipped:
                per_block.append({"block": name, "skipped": skipped})
                continue
            dyt = base.get_submodule(name)
            norm = _outer_norm(teacher, name)
            with torch.no_grad():
                targets = [norm(h).to(h.dtype) for h in teacher_hidden]
            before = _mean_error(lambda b: dyt(student_hidden[b]), targets, masks, sink_weight)
            params = list(dyt.parameters())
            for p in params:
                p.requires_grad_(True)
            _fit(params, lambda b: token_nmse(dyt(student_hidden[b]), targets[b], masks[b], sink_weight),
                 len(masks), steps_per_block, lr, max_grad_norm)
            for p in params:
                p.requires_grad_(False)
            after = _mean_error(lambda b: dyt(student_hidden[b]), targets, masks, sink_weight)
            per_block.append({"block": name, "nmse_before": before, "nmse_after": after})
    finally:
        for p in base.parameters():
            p.requires_grad_(flags.get(id(p), True))
        base.train(was_training)
    hidden = student_hidden[0].shape[-1]
    return {"tokens": tokens, "batches": len(masks), "steps_per_block": steps_per_block, "lr": lr,
            "max_grad_norm": max_grad_norm, "sink_weight": sink_weight, "blocks": per_block,
            "bytes_per_token": 3 * hidden * 4, "seconds": time.perf_counter() - start}
