"""Calibrated alpha: fit each DyT to reproduce the norm it replaces, on real activations.

For a norm with input x and output y = norm(x), the fit minimises the mean squared error of
gamma * tanh(alpha * x) + beta against y over calibration tokens, by a log-spaced grid search refined by
golden-section search (a 1-D, cheap, derivative-free fit; alpha spans ~0.01..20 in real models).
The linear form (FakeLN) needs no search: its alpha is 1 / the norm's mean per-token divisor (`fit_scale`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from dytune._blocks import StopForward, find_blocks, layer_index, record_calls
from dytune.conversion.config import METHODS, REFITS, RIDGE_TARGETS
from dytune.conversion.init import refit as refits
from dytune.conversion.init.fixed import centers, make_dyt
from dytune.dyt import FORMS, DyT
from dytune.norms import NormSite

# 0.001 .. 1000, 4 points a decade: the golden-section search refines the bracket around the best point, so a
# finer grid only buys tanh evaluations (the grid was 32 a decade: ~60% of the fits' time for the same alphas)
ALPHA_GRID = torch.logspace(-3, 3, 25)
GOLDEN_STEPS = 19  # the bracket (two grid steps, ~3.2x) narrowed to ~1.2e-4 in log-alpha


@dataclass
class FitResult:
    alpha: torch.Tensor  # shape [1] or [hidden]
    rel_error: float  # MSE(dyt, target) / mean(target^2) on the calibration tokens
    gamma: torch.Tensor | None = None  # refitted scale (None: the norm's own is kept)
    beta: torch.Tensor | None = None  # refitted shift (None: the norm's own, or none)


def dyt_output(x: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor | None):
    y = torch.tanh(alpha * x) * gamma
    return y if beta is None else y + beta


GRID_TOKENS = 2048  # rows used for the coarse grid search (the refinement uses up to REFINE_TOKENS)
REFINE_TOKENS = 8192
# Whether an affine refit gives bias-free norms (RMSNorm) a fitted beta: off (why: docs/conversion.md, Findings).
REFIT_ADDS_BIAS = False


def fit_alpha(x: torch.Tensor, site: NormSite, per_channel: bool = False, *, target: torch.Tensor | None = None,
              weights: torch.Tensor | None = None, refit_affine: bool = False) -> FitResult:
    """Best alpha for one norm, given its recorded inputs `x` of shape (tokens, hidden).

    `target`: what the DyT should output for each row (default: the norm's own output on `x`); sequential
    calibration passes the original model's norm output here. `weights`: per-row weights (sink tokens).
    `refit_affine`: gamma (and beta) become free per-channel least-squares parameters, and alpha is chosen
    for the best fit after that refit (variable projection); otherwise they stay the norm's exact values.

    The coarse grid runs on an evenly strided subset of tokens and the golden-section refinement on a
    larger one; their tanh evaluations (points x tokens x hidden) are what the fit costs (docs/conversion.md,
    "Conversion speed").
    """
    x, y, w, denom = _fit_rows(x, site, target, weights)
    gamma, beta = site.gamma().to(x.device), site.beta()
    beta = None if beta is None else beta.to(x.device)
    with_bias = beta is not None or (refit_affine and REFIT_ADDS_BIAS)

    def errors_on(xs, ys, ws, alpha) -> torch.Tensor:  # per-channel (weighted) MSE, shape (hidden,)
        if refit_affine:
            return refits.affine_fit(torch.tanh(alpha * xs), ys, ws, with_bias)[2]
        sq = (dyt_output(xs, alpha, gamma, beta) - ys).pow(2)
        return (sq if ws is None else ws.unsqueeze(1) * sq).mean(0)

    grid = ALPHA_GRID.to(x.device)
    sub = _strided_index(x.shape[0], GRID_TOKENS)
    x_grid, y_grid = x[sub], y[sub]
    w_grid = None if w is None else w[sub] / w[sub].mean()
    errors = torch.stack([errors_on(x_grid, y_grid, w_grid, a.reshape(1)) for a in grid])  # (grid, hidden)
    if per_channel:
        best = errors.argmin(0)  # (hidden,)
        lo = grid[(best - 1).clamp_min(0)]
        hi = grid[(best + 1).clamp_max(len(grid) - 1)]
        # each channel refined on the grid's objective, within its own bracket of two grid steps
        alpha = _golden(lambda a: errors_on(x, y, w, a), lo, hi)
    else:
        best = int(errors.mean(1).argmin())
        lo = grid[max(best - 1, 0)].reshape(1)
        hi = grid[min(best + 1, len(grid) - 1)].reshape(1)
        alpha = _golden(lambda a: errors_on(x, y, w, a).mean().reshape(1), lo, hi)
    new_gamma = new_beta = None
    if refit_affine:
        new_gamma, new_beta, err = refits.affine_fit(torch.tanh(alpha * x), y, w, with_bias)
    else:
        err = errors_on(x, y, w, alpha)
    return FitResult(alpha=alpha, rel_error=float(err.mean() / denom), gamma=new_gamma, beta=new_beta)


def _fit_rows(x: torch.Tensor, site: NormSite, target: torch.Tensor | None,  # noqa: ANN202
              weights: torch.Tensor | None):
    """The rows a fit measures its error on (an evenly strided REFINE_TOKENS of them): (x, target, normalised
    row weights or None, the target's weighted mean square: the relative error's denominator)."""
    rows = _strided_index(x.shape[0], REFINE_TOKENS)
    x = x[rows].float()
    y = site.reference_output(x) if target is None else target[rows].float().to(x.device)
    w = None if weights is None else weights[rows].float().to(x.device)
    w = None if w is None else w / w.mean()
    denom = (y.pow(2) if w is None else w.unsqueeze(1) * y.pow(2)).mean().clamp_min(1e-12)
    return x, y, w, denom


def _centred(x: torch.Tensor, center: bool) -> torch.Tensor:
    """x less its mean over the last dimension with `center` (what a LayerNorm subtracts), else x."""
    return x - x.mean(-1, keepdim=True) if center else x


def token_scale(x: torch.Tensor, center: bool, eps: float = 0.0) -> torch.Tensor:
    """Each row's scale as a norm divides by it: sqrt(mean(xc^2) + eps), xc = x less its mean with `center`
    (LayerNorm: the std), else x (RMSNorm: the RMS). x (..., hidden) -> (...)."""
    return (_centred(x.float(), center).pow(2).mean(-1) + eps).sqrt()


def fit_scale(x: torch.Tensor, site: NormSite, per_channel: bool = False, *, center: bool = False,
              target: torch.Tensor | None = None, weights: torch.Tensor | None = None,
              first: torch.Tensor | None = None, refit_affine: bool = False) -> FitResult:
    """alpha = 1 / sigma for the linear form (FakeLN), given a norm's recorded inputs `x` (tokens, hidden).

    sigma is the mean of the per-token scale the norm divides by (`token_scale`, with the norm's eps) over every
    row except each sequence's first (`first`, a bool per row): the attention sink's scale is far larger
    (Baroni et al. 2025's EXP_NON_BOS_AVERAGE_STD). Per-channel alpha starts at that same 1/sigma everywhere.
    `refit_affine`: gamma (and beta) become per-channel least-squares parameters for that alpha, as in
    `fit_alpha`; otherwise they stay the norm's. `target`, `weights`: as in `fit_alpha` (the error only)."""
    scales = token_scale(x, center, site.eps)
    kept = scales if first is None or bool(first[: len(scales)].all()) else scales[~first[: len(scales)].bool()]
    alpha = (1.0 / kept.mean()).reshape(1).expand(site.hidden_size if per_channel else 1).clone()
    x, y, w, denom = _fit_rows(x, site, target, weights)
    z = alpha * _centred(x, center)
    new_gamma = new_beta = None
    beta = site.beta()
    if refit_affine:
        new_gamma, new_beta, err = refits.affine_fit(z, y, w, beta is not None or REFIT_ADDS_BIAS)
    else:
        out = z * site.gamma().to(x.device) + (0.0 if beta is None else beta.to(x.device))
        sq = (out - y).pow(2)
        err = (sq if w is None else w.unsqueeze(1) * sq).mean(0)
    return FitResult(alpha=alpha, rel_error=float(err.mean() / denom), gamma=new_gamma, beta=new_beta)


def _strided_index(n_rows: int, n: int) -> torch.Tensor:
    return torch.arange(n_rows) if n_rows <= n else torch.linspace(0, n_rows - 1, n).long()


def _golden(f: Callable[[torch.Tensor], torch.Tensor], lo: torch.Tensor, hi: torch.Tensor,
            steps: int = GOLDEN_STEPS) -> torch.Tensor:
    """Vectorised golden-section minimisation in log-alpha; f maps alpha (shape s) to errors (shape s), each
    element on its own. One evaluation a step: the interior point that survives keeps its value."""
    inv_phi = (math.sqrt(5) - 1) / 2
    a, b = lo.log(), hi.log()
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = f(c.exp()), f(d.exp())
    for _ in range(steps):
        left = fc < fd  # the minimum is in [a, d]: d becomes c, a new c is evaluated; else the mirror image
        a, b = torch.where(left, a, c), torch.where(left, d, b)
        new = torch.where(left, b - inv_phi * (b - a), a + inv_phi * (b - a))
        f_new = f(new.exp())
        c, d = torch.where(left, new, d), torch.where(left, c, new)
        fc, fd = torch.where(left, f_new, fd), torch.where(left, fc, f_new)
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


def _block_inputs(model: torch.nn.Module, blocks: torch.nn.ModuleList, batches: list[dict]) -> list[tuple]:
    """(args, kwargs) with which the model calls its first block, per batch (the GPTQ "catcher" trick)."""
    device = next(model.parameters()).device
    with record_calls([blocks[0]], outputs=False, stop=True) as calls:
        for batch in batches:
            try:
                model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
            except StopForward:
                pass
    return [(call.args, call.kwargs) for call in calls[0]]


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
    refit: str = "affine",
    sink_weight: float = 1.0,
    ridge: float = 1e-3,
    ridge_to: str = "zero",
    max_tokens: int = 16384,
    progress: bool = True,
    form: str = "tanh",
) -> tuple[dict[str, tuple[DyT, float]], int]:
    """Fit a DyT for every site; returns ({name: (dyt, rel_error)}, calibration token count).

    `form` "tanh" fits alpha (`fit_alpha`); "linear" (FakeLN) sets alpha = 1/sigma from the same recorded inputs
    (`fit_scale`). Both then go through the same refits.

    "parallel": every norm is fitted on the original model's activations, in one forward pass.
    "sequential": block by block on the partly converted model (each fitted DyT replaces its norm in `model`
    before the next fit): each DyT sees the activations the converted model really
    produces, and is fitted to what the *original* block's norm outputs there (the original block runs beside
    it on the original activations), so errors upstream are corrected rather than copied.
    `refit` ("none" | "affine" | "linear") and `sink_weight`: see `refit.py`. "linear" changes the weights
    of the linear layers around each norm and needs the sequential method; `ridge` is the strength of its least-squares solves (`refit.ridge_solve`), pulling towards zero (`ridge_to="zero"`) or towards
    what the layer computed before the refit (`"original"`: the DyT's own affine fit for the maps, the original
    weights for the output projections)."""
    from tqdm.auto import tqdm

    if refit not in REFITS:
        raise ValueError(f"unknown refit {refit!r}: choose from {', '.join(REFITS)}")
    if refit == "linear" and method != "sequential":
        raise ValueError("refit='linear' needs calibration_method='sequential'")
    if form not in FORMS:
        raise ValueError(f"unknown DyT form {form!r}: choose from {', '.join(FORMS)}")
    if ridge_to not in RIDGE_TARGETS:
        raise ValueError(f"unknown ridge_to {ridge_to!r}: choose from {', '.join(RIDGE_TARGETS)}")
    if not keep_affine:
        refit = "none"  # the dropped-affine ablation keeps gamma=1, beta=0 by definition
    n_tokens = int(sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                       for b in batches))
    masks = [b.get("attention_mask") for b in batches]
    weights = _sink_weights(batches, sink_weight)[:max_tokens]
    first = _first_rows(batches)[:max_tokens]
    fitted: dict[str, tuple[DyT, float]] = {}

    def fit_and_install(site: NormSite, x: torch.Tensor, target: torch.Tensor | None = None) -> DyT:
        fit_site = site if keep_affine else _identity_affine(site)
        common = dict(per_channel=per_channel, target=target, weights=weights[: x.shape[0]],
                      refit_affine=refit != "none")
        if form == "linear":
            result = fit_scale(x, fit_site, center=centers(site, form), first=first[: x.shape[0]], **common)
        else:
            result = fit_alpha(x, fit_site, **common)
        dyt = _dyt_from_fit(site, result, per_channel, keep_affine, form)
        fitted[site.name] = (dyt, result.rel_error)
        if method == "sequential":
            model.set_submodule(site.name, dyt)
        return dyt

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}: sequential or parallel")
    if method == "parallel":
        inputs = record_norm_inputs(model, sites, batches, max_tokens=max_tokens, progress=progress)
        for site in tqdm(sites, desc="calibrating: fitting alpha", disable=not progress):
            fit_and_install(site, inputs[site.name])
        return fitted, n_tokens

    blocks_prefix, blocks = find_blocks(model)
    by_block: dict[int, list[NormSite]] = {}
    outside = []
    for site in sites:
        layer = layer_index(site.name, blocks_prefix)
        (by_block.setdefault(layer, []) if layer is not None else outside).append(site)
    before = [s for s in outside if s.kind == "embed"]
    after = [s for s in outside if s.kind != "embed"]
    if before:  # norms in front of the blocks see the original activations: fit them first
        inputs = record_norm_inputs(model, before, batches, max_tokens=max_tokens, progress=False)
        for site in before:
            fit_and_install(site, inputs[site.name])
    calls = _block_inputs(model, blocks, batches)
    hiddens = [_hidden_of(a, k) for a, k in calls]
    teacher_hiddens = list(hiddens)

    def real(xs: list[torch.Tensor]) -> torch.Tensor:
        return _real_tokens(xs, masks, max_tokens)

    for index in tqdm(range(len(blocks)), desc="calibrating: block by block", disable=not progress):
        block = blocks[index]
        teacher = copy.deepcopy(block)  # the original block, run on the original model's activations
        prefix = f"{blocks_prefix}.{index}."
        block_sites = by_block.get(index, [])
        teacher_norms = [teacher.get_submodule(s.name[len(prefix):]) for s in block_sites]
        # what a linear refit changes around each norm, and the original sub-layers' outputs it fits to
        sublayers = _sublayers(teacher, block_sites, teacher_norms, calls, teacher_hiddens) \
            if refit == "linear" else {}
        projected = [(sub, teacher.get_submodule(sub.projection)) for sub in sublayers.values() if sub.projection]
        # one run of the original block gives every site's target, those outputs and the next original activations
        recorded, next_teacher_hiddens = _run_block(
            teacher, calls, teacher_hiddens, teacher_norms + [m for _, m in projected],
            outputs=[False] * len(teacher_norms) + [True] * len(projected))
        teacher_inputs = recorded[: len(teacher_norms)]
        for (sub, _), out in zip(projected, recorded[len(teacher_norms):]):
            sub.wanted = out
        for site, x_teacher in zip(block_sites, teacher_inputs):
            target = site.reference_output(real(x_teacher))
            # the site's input, after the earlier sites were installed (the run stops there)
            (x,), _ = _run_block(block, calls, hiddens, [site.module], stop=True)
            x = real(x)
            dyt = fit_and_install(site, x, target)
            if refit == "linear" and site.kind in ("attn", "ffn"):
                error = _refit_linears(block, site, dyt, x, target, weights[: x.shape[0]], calls, hiddens, real,
                                       sublayers.get(site.name), ridge, ridge_to)
                fitted[site.name] = (dyt, error)
        _, hiddens = _run_block(block, calls, hiddens, [])
        teacher_hiddens = next_teacher_hiddens
        del teacher
    if after:  # the final norm: on the fully converted stack, against the original stack's final hidden state
        last_student, last_teacher = real(hiddens), real(teacher_hiddens)
        inputs = _final_norm_inputs(model, after, batches, hiddens, masks, max_tokens)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        for site in after:
            x = inputs[site.name]
            # the original's final norm input is its last hidden state, if that is what this norm reads
            reads_last = x.shape == last_student.shape and torch.allclose(x, last_student, atol=1e-5)
            target = site.reference_output(last_teacher if reads_last else x)
            dyt = fit_and_install(site, x, target)
            if refit == "none" or site.kind != "final" or head is None:
                continue
            if refit == "linear":
                mapping, error = _ridge_map(dyt, x, target, weights[: x.shape[0]], ridge, ridge_to)
                refits.fold_map_into_head(model, mapping)
                fitted[site.name] = (dyt, error)
            else:
                _final_norm_logit_fit(site, dyt, x, target, weights[: x.shape[0]], head.weight)
    return fitted, n_tokens


def _dyt_from_fit(site: NormSite, result: FitResult, per_channel: bool, keep_affine: bool,
                  form: str = "tanh") -> DyT:
    dyt = make_dyt(site, result.alpha, per_channel=per_channel, keep_affine=keep_affine,
                   bias=site.has_bias or result.beta is not None, form=form)
    if result.gamma is not None:
        dyt.weight.data.copy_(result.gamma.to(dyt.weight.device))
    if result.beta is not None:
        dyt.bias.data.copy_(result.beta.to(dyt.bias.device))
    return dyt


def _final_norm_logit_fit(site: NormSite, dyt: DyT, x: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                          head_weight: torch.Tensor) -> None:
    """The final norm feeds the LM head directly: refit its gamma for the logits' error, not the hidden's."""
    rows = _strided_index(x.shape[0], REFINE_TOKENS)
    z = _features(dyt, x[rows])
    gamma, beta = refits.logit_metric_affine(z, target[rows], weights[rows], head_weight, with_bias=dyt.bias is not None)
    dyt.weight.data.copy_(gamma.to(dyt.weight.device))
    if beta is not None:
        dyt.bias.data.copy_(beta.to(dyt.bias.device))


@dataclass
class _Sublayer:
    """What a linear refit changes around one norm, by name in its block (the converted block has the same names):
    the linears that read the norm's output, the sub-layer's output projection (None: it has none) and, once
    recorded, what the original projection output on each batch."""
    consumers: list[str]
    projection: str | None
    wanted: list[torch.Tensor] | None = None


def _sublayers(teacher, sites, norms, calls, hiddens) -> dict[str, _Sublayer]:  # noqa: ANN001
    """{site name: its `_Sublayer`} in the original block, traced on one batch."""
    names = {module: name for name, module in teacher.named_modules()}
    args, kwargs = _with_hidden(*calls[0], hiddens[0])
    traced = refits.trace_consumers(teacher, {s.name: norm for s, norm in zip(sites, norms)},
                                    lambda: teacher(*args, **kwargs))
    return {name: _Sublayer([names[c] for c in found], None if proj is None else names[proj])
            for name, (found, proj) in traced.items()}


def _refit_linears(block, site, dyt, x, target, weights, calls, hiddens, real,  # noqa: ANN001
                   sublayer: _Sublayer | None, ridge: float = 1e-3, ridge_to: str = "zero") -> float:
    """refit='linear' for one norm: fold a full least-squares map into its consumers, then refit the
    sub-layer's output projection against the original's outputs (see `refit.py`). Returns the map's fit error."""
    if sublayer is None or not sublayer.consumers:
        return float("nan")
    mapping, error = _ridge_map(dyt, x, target, weights, ridge, ridge_to)
    refits.fold_map_into_consumers([block.get_submodule(name) for name in sublayer.consumers], mapping)
    if sublayer.projection is not None:
        out_proj = block.get_submodule(sublayer.projection)
        (inputs,), _ = _run_block(block, calls, hiddens, [out_proj], stop=True)
        refits.refit_output_projection(out_proj, real(inputs), real(sublayer.wanted), weights, ridge,
                                       towards_current=ridge_to == "original")
    return error


def _ridge_map(dyt: DyT, x: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
               ridge: float = 1e-3, ridge_to: str = "zero") -> tuple[torch.Tensor, float]:
    """The full least-squares map from the DyT's features (`_features`) to `target`, for its consumers to absorb: the DyT
    keeps gamma = 1 (and the offset in beta, where it has one). Returns (map (in, out), relative error).
    `ridge_to="original"`: the ridge pulls towards the DyT's own affine fit (diag(gamma), beta)."""
    z = _features(dyt, x)
    features = torch.cat([z, torch.ones(len(z), 1)], 1) if dyt.bias is not None else z
    prior = None
    if ridge_to == "original":
        gamma = dyt.weight.detach().double().cpu().expand(z.shape[1])  # scalar or per-channel
        prior = torch.diag(gamma)
        if dyt.bias is not None:
            prior = torch.cat([prior, dyt.bias.detach().double().cpu().unsqueeze(0)], 0)
    solution = refits.ridge_solve(features, target, weights, ridge, prior)
    mapping = solution[: z.shape[1]]
    residual = features.float() @ solution.float() - target.float()
    error = float((weights.unsqueeze(1) * residual.pow(2)).mean() / (weights.unsqueeze(1) * target.pow(2)).mean())
    dyt.weight.data.fill_(1.0)
    if dyt.bias is not None:  # y ~ (z + c) @ mapping: the offset stays in the DyT's beta
        offset = torch.linalg.lstsq(mapping.T, solution[-1].unsqueeze(1)).solution.squeeze(1)
        dyt.bias.data.copy_(offset.float())
    return mapping, error


def _features(dyt: DyT, x: torch.Tensor) -> torch.Tensor:
    """What the DyT multiplies by gamma, on CPU rows x: tanh(alpha x), or alpha x (centred) for the linear form."""
    alpha = dyt.alpha.detach().float().cpu()
    if dyt.form == "linear":
        return alpha * _centred(x, dyt.center)
    return torch.tanh(alpha * x)


def _run_block(block, calls, hiddens, modules, outputs: bool | Sequence[bool] = False,  # noqa: ANN001, ANN202
               stop: bool = False):
    """Run `block` on every batch; returns ([per module: list of its inputs (or outputs)], block outputs).

    `outputs`: one flag for every module, or one per module. `stop`: each batch's run ends once every module has
    been recorded (the rest of the block is not computed; no block outputs then)."""
    flags = [outputs] * len(modules) if isinstance(outputs, bool) else list(outputs)
    new_hiddens = []
    with record_calls(modules, outputs=any(flags), stop=stop) as recorded:
        for (args, kwargs), hidden in zip(calls, hiddens):
            a, k = _with_hidden(args, kwargs, hidden)
            try:
                out = block(*a, **k)
            except StopForward:
                continue
            new_hiddens.append(out[0] if isinstance(out, (tuple, list)) else out)
    kept = [[(c.output if flag else c.args[0]).detach() for c in module_calls]
            for flag, module_calls in zip(flags, recorded)]
    return kept, (None if stop else new_hiddens)


def first_positions(shape: torch.Size | tuple[int, int], attention_mask: torch.Tensor | None = None,
                    device: torch.device | None = None) -> torch.Tensor:
    """(B, T) bool: each sequence's first real token (position 0 without a mask)."""
    if attention_mask is None:
        first = torch.zeros(shape, dtype=torch.bool, device=device)
        first[:, 0] = True
        return first
    mask = attention_mask.bool()
    return mask & (mask.long().cumsum(1) == 1)


def _first_rows(batches: list[dict]) -> torch.Tensor:
    """A bool per row in `_real_tokens` order: True for each sequence's first real token (the attention sink)."""
    rows = []
    for batch in batches:
        mask = batch.get("attention_mask")
        mask = torch.ones_like(batch["input_ids"]) if mask is None else mask
        rows.append(first_positions(mask.shape, mask)[mask.bool()])
    return torch.cat(rows)


def _sink_weights(batches: list[dict], sink_weight: float) -> torch.Tensor:
    """Row weights in `_real_tokens` order: `sink_weight` for each sequence's first real token, else 1."""
    return torch.where(_first_rows(batches), float(sink_weight), 1.0).float()


def _final_norm_inputs(model: torch.nn.Module, sites: Sequence[NormSite], batches: list[dict],
                       last_hiddens: list[torch.Tensor], masks: list, max_tokens: int) -> dict[str, torch.Tensor]:
    """Each norm after the blocks' input on every batch. A norm that reads the last block's output (checked on the
    first batch) takes it from `last_hiddens`, which the block-by-block pass already computed: a whole forward of
    the model spared (about a tenth of the conversion)."""
    probe = record_norm_inputs(model, sites, batches[:1], max_tokens=max_tokens, progress=False)
    last_first = _real_tokens(last_hiddens[:1], masks[:1], max_tokens)
    reads_last = [s for s in sites if probe[s.name].shape == last_first.shape
                  and torch.allclose(probe[s.name], last_first, atol=1e-5)]
    others = [s for s in sites if s not in reads_last]
    inputs = record_norm_inputs(model, others, batches, max_tokens=max_tokens, progress=False) if others else {}
    if reads_last:
        last = _real_tokens(last_hiddens, masks, max_tokens)
        inputs.update({s.name: last for s in reads_last})
    return inputs


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
