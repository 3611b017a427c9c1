"""Calibrated alpha: fit each DyT to reproduce the norm it replaces, on real activations.

For a norm with input x and output y = norm(x), the fit minimises the mean squared error of
gamma * tanh(alpha * x) + beta against y over calibration tokens, by a log-spaced grid search refined by
golden-section search (a 1-D, cheap, derivative-free fit; alpha spans ~0.01..20 in real models).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from dytune.norms import NormSite

ALPHA_GRID = torch.logspace(-3, 3, 193)  # 0.001 .. 1000


@dataclass
class FitResult:
    alpha: torch.Tensor  # shape [1] or [hidden]
    rel_error: float  # MSE(dyt, norm) / mean(norm^2) on the calibration tokens


def dyt_output(x: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None):
    y = torch.tanh(alpha * x) * gamma
    return y if beta is None else y + beta


GRID_TOKENS = 2048  # rows used for the coarse grid search (the refinement uses up to REFINE_TOKENS)
REFINE_TOKENS = 8192


def _strided_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if x.shape[0] <= n else x[torch.linspace(0, x.shape[0] - 1, n).long()]


def fit_alpha(x: torch.Tensor, site: NormSite, per_channel: bool = False) -> FitResult:
    """Best alpha for one norm, given its recorded inputs `x` of shape (tokens, hidden).

    The coarse grid runs on an evenly strided subset of tokens and the golden-section refinement on a
    larger one: the grid's tanh evaluations (grid points x tokens x hidden) dominate the conversion time.
    """
    x = _strided_rows(x.float(), REFINE_TOKENS)
    y = site.reference_output(x)
    gamma, beta = site.gamma().to(x.device), site.beta()
    beta = None if beta is None else beta.to(x.device)
    denom = y.pow(2).mean().clamp_min(1e-12)

    def err(alpha: torch.Tensor) -> torch.Tensor:  # per-channel MSE, shape (hidden,)
        return (dyt_output(x, alpha, gamma, beta) - y).pow(2).mean(0)

    grid = ALPHA_GRID.to(x.device)
    x_grid = _strided_rows(x, GRID_TOKENS)
    y_grid = site.reference_output(x_grid)
    errors = torch.stack([(dyt_output(x_grid, a.reshape(1), gamma, beta) - y_grid).pow(2).mean(0)
                          for a in grid])  # (grid, hidden)
    if per_channel:
        best = errors.argmin(0)  # (hidden,)
        lo = grid[(best - 1).clamp_min(0)]
        hi = grid[(best + 1).clamp_max(len(grid) - 1)]
        alpha = _golden(lambda a: err(a), lo, hi)
    else:
        best = int(errors.mean(1).argmin())
        lo = grid[max(best - 1, 0)].reshape(1)
        hi = grid[min(best + 1, len(grid) - 1)].reshape(1)
        alpha = _golden(lambda a: err(a).mean().reshape(1), lo, hi)
    return FitResult(alpha=alpha, rel_error=float(err(alpha).mean() / denom))


def _golden(f: Callable[[torch.Tensor], torch.Tensor], lo: torch.Tensor, hi: torch.Tensor, steps: int = 30):
    """Vectorised golden-section minimisation in log-alpha; f maps alpha (shape s) to errors (shape s)."""
    inv_phi = (math.sqrt(5) - 1) / 2
    a, b = lo.log(), hi.log()
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = f(c.exp()), f(d.exp())
    for _ in range(steps):
        left = fc < fd
        b = torch.where(left, d, b)
        a = torch.where(left, a, c)
        c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
        fc, fd = f(c.exp()), f(d.exp())
    return ((a + b) / 2).exp()


@torch.no_grad()
def record_norm_inputs(
    model: torch.nn.Module,
    sites: Sequence[NormSite],
    batches: Iterable[dict[str, torch.Tensor]],
    max_tokens: int = 16384,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Run the model on calibration batches and keep each norm's input (real, non-padding tokens only)."""
    from tqdm.auto import tqdm

    stored: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    counts = {s.name: 0 for s in sites}
    mask_holder: dict[str, torch.Tensor | None] = {"mask": None}

    def hook_for(name: str):
        def hook(mod, args):
            if counts[name] >= max_tokens:
                return
            x = args[0].detach()
            mask = mask_holder["mask"]
            x = x[mask] if mask is not None and mask.shape == x.shape[:-1] else x.reshape(-1, x.shape[-1])
            x = x.reshape(-1, x.shape[-1])[: max_tokens - counts[name]]
            stored[name].append(x.float().cpu())
            counts[name] += x.shape[0]
        return hook

    handles = [s.module.register_forward_pre_hook(hook_for(s.name)) for s in sites]
    device = next(model.parameters()).device
    try:
        batches = list(batches)
        for batch in tqdm(batches, desc="calibrating: recording norm inputs", disable=not progress):
            batch = {k: v.to(device) for k, v in batch.items()}
            mask_holder["mask"] = batch.get("attention_mask", None)
            if mask_holder["mask"] is not None:
                mask_holder["mask"] = mask_holder["mask"].bool()
            model(**batch, use_cache=False)
            if all(c >= max_tokens for c in counts.values()):
                break
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(chunks) for name, chunks in stored.items() if chunks}


class _StopForward(Exception):
    pass


def _block_inputs(model: torch.nn.Module, blocks: torch.nn.ModuleList, batches: list[dict]) -> list[tuple]:
    """(args, kwargs) with which the model calls its first block, per batch (the GPTQ "catcher" trick)."""
    captured: list[tuple] = []

    def catch(mod, args, kwargs):
        captured.append((args, kwargs))
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(catch, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for batch in batches:
            try:
                model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@torch.no_grad()
def calibrate_sites(
    model: torch.nn.Module,
    sites: Sequence[NormSite],
    batches: list[dict[str, torch.Tensor]],
    *,
    per_channel: bool = False,
    keep_affine: bool = True,
    method: str = "sequential",
    max_tokens: int = 16384,
    progress: bool = True,
    install: Callable | None = None,
) -> tuple[dict[str, tuple[torch.Tensor, float]], int]:
    """Fit alpha for every site; returns ({name: (alpha, rel_error)}, calibration token count).

    "parallel": every norm is fitted on the original model's activations, in one forward pass.
    "sequential": block by block on the partly converted model (each fitted DyT is installed through
    `install(site, dyt)` before the next fit), so later fits see the activations that the converted model
    really produces and errors do not compound unseen. The caller re-installs the final modules.
    """
    from tqdm.auto import tqdm

    from dytune.convert import make_dyt
    from dytune.norms import _find_blocks, _layer_index

    n_tokens = int(sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                       for b in batches))
    fits: dict[str, tuple[torch.Tensor, float]] = {}

    def fit_and_install(site: NormSite, x: torch.Tensor) -> None:
        result = fit_alpha(x, site if keep_affine else _identity_affine(site), per_channel=per_channel)
        fits[site.name] = (result.alpha.cpu(), result.rel_error)
        if install is not None and method == "sequential":
            install(site, make_dyt(site, result.alpha, per_channel=per_channel, keep_affine=keep_affine))

    if method == "parallel":
        inputs = record_norm_inputs(model, sites, batches, max_tokens=max_tokens, progress=progress)
        for site in tqdm(sites, desc="calibrating: fitting alpha", disable=not progress):
            fit_and_install(site, inputs[site.name])
        return fits, n_tokens
    if method != "sequential":
        raise ValueError(f"unknown calibration method {method!r}: sequential or parallel")

    blocks_prefix, blocks = _find_blocks(model)
    by_block: dict[int, list[NormSite]] = {}
    outside = []
    for site in sites:
        layer = _layer_index(site.name, blocks_prefix)
        (by_block.setdefault(layer, []) if layer is not None else outside).append(site)
    before = [s for s in outside if s.kind == "embed"]
    after = [s for s in outside if s.kind != "embed"]
    if before:  # norms in front of the blocks see the original activations: fit them first
        inputs = record_norm_inputs(model, before, batches, max_tokens=max_tokens, progress=False)
        for site in before:
            fit_and_install(site, inputs[site.name])
    calls = _block_inputs(model, blocks, batches)
    masks = [b.get("attention_mask") for b in batches]
    hiddens = [_hidden_of(a, k) for a, k in calls]
    for index in tqdm(range(len(blocks)), desc="calibrating: block by block", disable=not progress):
        block = blocks[index]
        for site in by_block.get(index, []):
            recorded = []
            hook = site.module.register_forward_pre_hook(lambda mod, args: recorded.append(args[0].detach()))
            try:
                for (args, kwargs), hidden in zip(calls, hiddens):
                    block(*_with_hidden(args, kwargs, hidden)[0], **_with_hidden(args, kwargs, hidden)[1])
            finally:
                hook.remove()
            fit_and_install(site, _real_tokens(recorded, masks, max_tokens))
        new_hiddens = []
        for (args, kwargs), hidden in zip(calls, hiddens):
            a, k = _with_hidden(args, kwargs, hidden)
            out = block(*a, **k)
            new_hiddens.append(out[0] if isinstance(out, (tuple, list)) else out)
        hiddens = new_hiddens
    if after:  # the final norm: record on the fully converted stack
        inputs = record_norm_inputs(model, after, batches, max_tokens=max_tokens, progress=False)
        for site in after:
            fit_and_install(site, inputs[site.name])
    return fits, n_tokens


def _real_tokens(recorded: list[torch.Tensor], masks: list, max_tokens: int) -> torch.Tensor:
    rows = []
    for x, mask in zip(recorded, masks):
        if mask is not None and mask.shape == x.shape[:-1]:
            x = x[mask.to(x.device).bool()]
        rows.append(x.reshape(-1, x.shape[-1]).float().cpu())
    return torch.cat(rows)[:max_tokens]


def _identity_affine(site: NormSite) -> NormSite:
    """The site as seen by a DyT that drops gamma/beta: fit alpha against the norm's bare normalisation."""
    return _BareNormSite(**{f: getattr(site, f) for f in site.__dataclass_fields__})


class _BareNormSite(NormSite):
    def gamma(self) -> torch.Tensor:
        return torch.ones(self.hidden_size)

    def beta(self) -> torch.Tensor | None:
        return None if not self.has_bias else torch.zeros(self.hidden_size)
