"""`bf16: auto`: bf16 mixed precision only where bf16 matmuls beat float32.

On a CPU, bf16 GEMMs are fast only with AMX or AVX512-BF16 instructions; without them oneDNN emulates bf16 and a
bf16 training step runs several times slower than float32 (measured in docs/recovery.md). `auto` turns bf16 on for
CUDA GPUs that support it and for CPUs with either instruction set, and off everywhere else.
"""

from __future__ import annotations

from dytune.errors import DytuneError

AUTO = "auto"
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def bf16_is_fast(device: str) -> tuple[bool, str]:
    """(whether bf16 matmuls are faster than float32 on `device`, 'cuda' or 'cpu' or another backend; why)."""
    import torch

    if device == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return True, "a CUDA GPU with bf16"
        return False, "this CUDA GPU has no bf16"
    if device != "cpu":
        return False, f"bf16: auto turns bf16 on only on CUDA GPUs and AMX / AVX512-BF16 CPUs, not on {device}"
    # torch.cpu's own capability checks (private, present since torch 2.3): what oneDNN's bf16 GEMMs run on
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return True, "a CPU with AMX"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return True, "a CPU with AVX512-BF16"
    return False, "this CPU has neither AMX nor AVX512-BF16: its bf16 matmuls are emulated, slower than float32"


def resolve_bf16(value: bool | str, device: str) -> tuple[bool, str | None]:
    """A `bf16` setting (true, false or 'auto') on `device` -> (bf16 on?, a one-line note for the log, or None).
    bf16 asked for on a CPU where it is slow stays on, with a note saying so."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word == AUTO:
            fast, why = bf16_is_fast(device)
            return fast, f"bf16: auto -> {'bf16' if fast else 'float32'} ({why})"
        if word not in _TRUE + _FALSE:
            raise DytuneError(f"bf16 must be true, false or auto, got {value!r}")
        value = word in _TRUE
    if value and device == "cpu":
        fast, why = bf16_is_fast(device)
        if not fast:
            return True, f"bf16: true, but {why}; bf16: auto would train in float32 here"
    return bool(value), None
