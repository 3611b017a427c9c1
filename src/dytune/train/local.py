"""Block-wise (local) distillation: before end-to-end training, fit each converted block to the original one.

For every batch the teacher (the same weights with the original norms, see `teacher.py`) runs once and each
decoder block's input, keyword arguments (mask, rotary embeddings) and output are captured. Then each student
block runs on the *teacher's* input and is pulled towards the teacher's output with a normalised MSE; norms
outside the blocks (the final norm) are fitted the same way on their own input/output. Errors do not compound
through depth, so every block gets a clean target: this is the layer-wise recipe of the LayerNorm-removal work,
cheap because no gradient crosses a block boundary and no vocabulary-sized logits are needed.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterable

import torch
from torch import nn

from dytune._blocks import find_blocks, record_calls, unwrap
from dytune.dyt import DyT


def _nmse(student: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(torch.float32)  # (B, T, 1)
    err = ((student.float() - target.float()).pow(2) * m).sum()
    return err / (target.float().pow(2) * m).sum().clamp_min(1e-6)


def _first(value) -> torch.Tensor:  # noqa: ANN001
    return value[0] if isinstance(value, (tuple, list)) else value


def local_distill(model: nn.Module, teacher, batches: Iterable[dict], *, steps: int,  # noqa: ANN001
                  lr: float = 1e-3, params: str = "dyt", progress: bool = True) -> dict:
    """Train DyT parameters (`params="dyt"`) or whole blocks (`"block"`) block by block; returns a summary.

    `teacher`: an `OriginalNorms` (same weights, original norms) or a `FrozenTeacher` (a separate original model)."""
    prefix, blocks = find_blocks(model)
    outer = [n for n, m in model.named_modules() if isinstance(m, DyT) and not n.startswith(prefix + ".")]
    if params == "dyt":
        trainable = [p for m in model.modules() if isinstance(m, DyT) for p in m.parameters()]
    else:
        trainable = [p for b in blocks for p in b.parameters()]
        trainable += [p for s in outer for p in model.get_submodule(s).parameters()]
    was_training = model.training
    flags = {id(p): p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    history, tokens, start = [], 0, time.perf_counter()
    device = next(model.parameters()).device
    try:
        for step, batch in enumerate(itertools.islice(itertools.cycle(batches), steps)):
            ids = batch["input_ids"].to(device)
            mask = batch["attention_mask"].to(device)
            tokens += int(mask.sum())
            with torch.no_grad(), teacher.teacher(model) as teacher_model:
                t_base = unwrap(teacher_model)
                watched = [*find_blocks(t_base)[1], *(t_base.get_submodule(name) for name in outer)]
                # entered after the teacher's hooks, so the outer norms' outputs are the original norms'
                with record_calls(watched) as calls:
                    teacher_model(input_ids=ids, attention_mask=mask, use_cache=False)
            block_calls, outer_calls = calls[:len(blocks)], calls[len(blocks):]
            model.eval()  # no dropout: the student block sees exactly the teacher's input
            losses = []
            for block, (call,) in zip(blocks, block_calls):
                losses.append(_nmse(_first(block(*call.args, **call.kwargs)), _first(call.output).detach(), mask))
            for name, (call,) in zip(outer, outer_calls):
                losses.append(_nmse(model.get_submodule(name)(call.args[0].detach()), call.output.detach(), mask))
            loss = torch.stack(losses).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()) / len(losses))
            if progress and (step % 10 == 0 or step == steps - 1):
                print(f"  local distillation step {step + 1}/{steps}: mean block nmse {history[-1]:.4g}",
                      file=sys.stderr, flush=True)
    finally:
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), True))
        model.train(was_training)
    return {"steps": len(history), "tokens": tokens, "params": params, "lr": lr,
            "nmse_first": history[0] if history else None, "nmse_last": history[-1] if history else None,
            "seconds": time.perf_counter() - start}
