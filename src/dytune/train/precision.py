"""`bf16: auto`: bf16 mixed precision only where bf16 matmuls beat float32.

On a CPU, bf16 GEMMs are fast only with AMX or AVX512-BF16 instructions; without them oneDNN emulates bf16 and
recovery training ran at 0.39x float32 (docs/recovery.md). `auto` turns bf16 on for CUDA GPUs with native bf16
(compute capability 8.0+) and for CPUs with either instruction set, and off everywhere else and under fp16.
"""

from __future__ import annotations

from argparse import ArgumentTypeError

from dytune.errors import DytuneError

AUTO = "auto"


def bf16_is_fast(device: str) -> tuple[bool, str]:
    """(whether bf16 matmuls are faster than float32 on `device`, 'cuda' or 'cpu' or another backend; why)."""
    import torch

    if device == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
            return True, "a CUDA GPU with native bf16"
        return False, "this CUDA GPU has no native bf16 (compute capability below 8.0)"
    if device != "cpu":
        return False, f"bf16: auto turns bf16 on only on CUDA GPUs and AMX / AVX512-BF16 CPUs, not on {device}"
    # torch.cpu's own capability checks (private, present since torch 2.3): what oneDNN's bf16 GEMMs run on
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return True, "a CPU with AMX"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return True, "a CPU with AVX512-BF16"
    return False, "this CPU has neither AMX nor AVX512-BF16: its bf16 matmuls are emulated, slower than float32"


def resolve_bf16(value: bool | str, device: str, fp16: bool = False,
                 recorded: bool | None = None) -> tuple[bool, str | None]:
    """A `bf16` setting (true, false or 'auto') on `device` -> (bf16 on?, a one-line note for the log, or None).
    `recorded`: what a resumed run trained in so far (its config.yaml), which `auto` keeps. bf16 asked for on a CPU
    where it is slow stays on, with a note saying so."""
    from transformers.hf_argparser import string_to_bool  # the command line's words for true and false

    if isinstance(value, str):
        word = value.strip().lower()
        if word == AUTO:
            if recorded is not None:
                return recorded, f"bf16: auto -> {'bf16' if recorded else 'float32'} (as this run trained so far)"
            fast, why = (False, "fp16 is on") if fp16 else bf16_is_fast(device)
            return fast, f"bf16: auto -> {'bf16' if fast else 'float32'} ({why})"
        try:
            value = string_to_bool(word)
        except ArgumentTypeError:
            raise DytuneError(f"bf16 must be true, false or auto, got {value!r}") from None
    if value and device == "cpu":
        fast, why = bf16_is_fast(device)
        if not fast:
            return True, f"bf16: true, but {why}; bf16: auto would train in float32 here"
    return bool(value), None
