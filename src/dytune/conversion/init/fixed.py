"""Fixed-scale DyT initialisation: a DyT (either form) for a norm with the norm's gamma/beta and a given alpha (a
constant, or the paper's width rule). Calibration (`calibrate.py`) chooses alpha from data and builds its DyT
with `make_dyt`."""

from __future__ import annotations

import math

import torch

from dytune.dyt import DyT
from dytune.norms import NormSite

# The paper's alpha0 for LLaMA (Table 12 of arXiv:2503.10622): width -> (attention-input, FFN/final).
# It gives no values below 7B; narrower models use the 7B pair.
PAPER_ALPHA_BY_WIDTH: dict[int, tuple[float, float]] = {4096: (0.8, 0.2), 5120: (0.6, 0.15), 8192: (0.2, 0.05)}


def paper_alpha(kind: str, width: int) -> float:
    """The paper's alpha0 rule: larger for attention-input norms than for FFN/final norms, smaller for wider
    models (log-linear interpolation between the paper's LLaMA widths)."""
    widths = sorted(PAPER_ALPHA_BY_WIDTH)
    column = 0 if kind in ("attn", "qk") else 1
    if width <= widths[0]:
        return PAPER_ALPHA_BY_WIDTH[widths[0]][column]
    if width >= widths[-1]:
        return PAPER_ALPHA_BY_WIDTH[widths[-1]][column]
    lo = max(w for w in widths if w <= width)
    hi = min(w for w in widths if w >= width)
    if lo == hi:
        return PAPER_ALPHA_BY_WIDTH[lo][column]
    t = math.log(width / lo) / math.log(hi / lo)
    a, b = PAPER_ALPHA_BY_WIDTH[lo][column], PAPER_ALPHA_BY_WIDTH[hi][column]
    return math.exp(math.log(a) * (1 - t) + math.log(b) * t)


def centers(site: NormSite, form: str) -> bool:
    """Whether a DyT of `form` for `site` subtracts the token mean: the linear form does where the norm did."""
    return form == "linear" and site.norm_type == "layernorm"


def make_dyt(site: NormSite, alpha: float | torch.Tensor, per_channel: bool = False, keep_affine: bool = True,
             bias: bool | None = None, form: str = "tanh") -> DyT:
    """A DyT of `form` ("tanh" or "linear") for `site` with the norm's gamma/beta copied exactly (or identity
    affine if not `keep_affine`). `bias`: give the DyT a beta even where the norm has none (zero-initialised;
    calibration refits fill it)."""
    alpha_t = torch.as_tensor(alpha, dtype=torch.float32).flatten()
    per_channel = per_channel or alpha_t.numel() > 1
    dyt = DyT(site.hidden_size, alpha_init=alpha_t if per_channel else alpha_t[:1], per_channel=per_channel,
              bias=site.has_bias if bias is None else bias, form=form, center=centers(site, form))
    device = next(site.module.parameters(), torch.empty(0)).device
    dyt.to(device)
    if keep_affine:
        with torch.no_grad():
            dyt.weight.copy_(site.gamma())
            if site.has_bias:
                dyt.bias.copy_(site.beta())
    return dyt
