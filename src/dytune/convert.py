"""Model surgery: replace a model's LayerNorm / RMSNorm layers with DyT, and put them back.

    report = dytune.convert(model, tokenizer=tok)          # calibrated alpha (default)
    report = dytune.convert(model, alpha_init="paper")     # the paper's width rule
    report = dytune.convert(model, alpha_init="constant:0.5")
    print(report.table())
    dytune.revert(model)                                    # original norms back (e.g. a distillation teacher)

gamma/beta are copied exactly from each norm's effective scale/shift (Gemma's `1 + weight` included).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from dytune.dyt import DyT
from dytune.errors import DytuneError
from dytune.norms import ALL_KINDS, DEFAULT_KINDS, NormSite, find_norms

# The paper's alpha0 for LLaMA (Table 12 of arXiv:2503.10622): width -> (attention-input, FFN/final).
# It gives no values below 7B; narrower models use the 7B pair.
PAPER_ALPHA_BY_WIDTH: dict[int, tuple[float, float]] = {4096: (0.8, 0.2), 5120: (0.6, 0.15), 8192: (0.2, 0.05)}


@dataclass
class LayerReport:
    name: str
    kind: str
    norm_type: str
    converted: bool
    alpha: float | None = None  # mean alpha if per-channel
    alpha_min: float | None = None
    alpha_max: float | None = None
    fit_error: float | None = None  # relative MSE of DyT vs the norm on calibration tokens


@dataclass
class ConversionReport:
    alpha_init: str
    per_channel: bool
    kinds: list[str]
    layers: list[LayerReport] = field(default_factory=list)
    calibration_tokens: int = 0
    refit: str = "none"  # see dytune.refit: which parameters calibration refitted besides alpha
    refit_ridge: float | None = None  # the "linear" refit's ridge strength
    refit_ridge_to: str | None = None  # and what it pulls towards

    @property
    def converted(self) -> list[LayerReport]:
        return [layer for layer in self.layers if layer.converted]

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2)

    def table(self) -> str:
        """Markdown table, one row per norm layer."""
        rows = ["| layer | kind | norm | converted | alpha | fit error |", "|---|---|---|---|---|---|"]
        for r in self.layers:
            if r.alpha is None:
                alpha = "-"
            elif r.alpha_min is not None and r.alpha_max is not None and r.alpha_min != r.alpha_max:
                alpha = f"{r.alpha:.4g} ({r.alpha_min:.3g}..{r.alpha_max:.3g})"
            else:
                alpha = f"{r.alpha:.4g}"
            err = "-" if r.fit_error is None else f"{r.fit_error:.4f}"
            rows.append(f"| {r.name} | {r.kind} | {r.norm_type} | {'yes' if r.converted else 'no'} | {alpha} | {err} |")
        n = len(self.converted)
        rows.append("")
        rows.append(f"{n} of {len(self.layers)} norm layers converted; alpha init: {self.alpha_init}"
                    + (f"; calibration tokens: {self.calibration_tokens}" if self.calibration_tokens else "")
                    + (f"; least-squares refit: {self.refit}" if self.refit != "none" else ""))
        return "\n".join(rows)


def parse_kinds(norms: str | Iterable[str] | None) -> tuple[str, ...]:
    """`"attn,ffn,final"` or a list -> validated kinds; None -> the default set (everything but QK-norm)."""
    if norms is None:
        return DEFAULT_KINDS
    kinds = tuple(k.strip() for k in (norms.split(",") if isinstance(norms, str) else norms) if k.strip())
    if kinds == ("all",):
        return ALL_KINDS
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad or not kinds:
        raise DytuneError(f"unknown norm kind(s) {bad or kinds}: choose from {', '.join(ALL_KINDS)} (or 'all')")
    return kinds


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


def _parse_alpha_init(alpha_init: str | float) -> tuple[str, float | None]:
    if isinstance(alpha_init, (int, float)):
        return "constant", float(alpha_init)
    text = alpha_init.strip().lower()
    if text.startswith("constant"):
        _, _, value = text.partition(":")
        try:
            return "constant", float(value or 0.5)
        except ValueError:
            raise DytuneError(f"bad alpha init {alpha_init!r}: write constant:0.5 (a number after the colon)") from None
    if text in ("paper", "calibrated"):
        return text, None
    raise DytuneError(f"unknown alpha init {alpha_init!r}: choose constant:VALUE, paper or calibrated")


def make_dyt(site: NormSite, alpha: float | torch.Tensor, per_channel: bool = False, keep_affine: bool = True,
             bias: bool | None = None) -> DyT:
    """A DyT for `site` with the norm's gamma/beta copied exactly (or identity affine if not `keep_affine`).
    `bias`: give the DyT a beta even where the norm has none (zero-initialised; calibration refits fill it)."""
    alpha_t = torch.as_tensor(alpha, dtype=torch.float32).flatten()
    per_channel = per_channel or alpha_t.numel() > 1
    dyt = DyT(site.hidden_size, alpha_init=alpha_t if per_channel else alpha_t[:1], per_channel=per_channel,
              bias=site.has_bias if bias is None else bias)
    device = next(site.module.parameters(), torch.empty(0)).device
    dyt.to(device)
    if keep_affine:
        with torch.no_grad():
            dyt.weight.copy_(site.gamma())
            if site.has_bias:
                dyt.bias.copy_(site.beta())
    return dyt


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _calibration_batches(model, tokenizer, calibration, max_length: int, batch_size: int = 4):
    """Token batches from texts (list[str]), ready batches (list of dicts), or the built-in text."""
    from dytune.calibration_text import builtin_calibration_texts

    if calibration is not None and len(calibration) and isinstance(calibration[0], dict):
        return list(calibration)
    if tokenizer is None:
        raise DytuneError("calibrated alpha needs a tokenizer (tokenizer=...) or pre-tokenized calibration "
                          "batches; or use alpha_init='paper' / 'constant:VALUE'")
    texts = list(calibration) if calibration is not None else builtin_calibration_texts(tokenizer)
    config = getattr(model, "config", None)
    max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if max_positions:
        max_length = min(max_length, int(max_positions))
    if not texts:
        raise DytuneError("calibration data is empty: give at least one text")
    batches = []
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length)
            batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    finally:
        tokenizer.padding_side = pad_side
    return batches


def convert(
    model: nn.Module,
    *,
    alpha_init: str | float = "calibrated",
    norms: str | Sequence[str] | None = None,
    per_channel: bool = False,
    keep_affine: bool = True,
    tokenizer=None,  # noqa: ANN001 - any HF tokenizer
    calibration: Sequence[str] | Sequence[dict] | None = None,
    calibration_max_length: int = 512,
    calibration_max_tokens: int = 16384,
    calibration_method: str = "sequential",
    calibration_refit: str = "affine",
    sink_weight: float = 1.0,
    refit_ridge: float = 1e-3,
    refit_ridge_to: str = "zero",
    progress: bool = True,
) -> ConversionReport:
    """Replace the selected norm layers of `model` with DyT, in place; returns a per-layer report.

    Args:
        alpha_init: "calibrated" (default: fit each alpha to reproduce its norm on calibration text),
            "paper" (the paper's width rule), "constant:VALUE" or a float.
        norms: kinds to convert (see `dytune.norms`); default all but QK-norm.
        per_channel: one alpha per channel instead of a scalar.
        keep_affine: copy the norm's gamma/beta (True); False reproduces the original study's bug of
            dropping them (weight=1, bias=0), for ablations only.
        tokenizer / calibration: texts (or token batches) for calibration; default a built-in set.
        calibration_method: "sequential" fits layer by layer on the partly converted model, so each fit
            sees the activations the converted model really produces; "parallel" fits every norm on the
            original model's activations in one pass.
        calibration_refit: "affine" (default) also refits each DyT's gamma/beta by least squares against the
            original norm's output; "none" keeps the norm's exact gamma/beta and fits alpha only; "linear"
            additionally changes the linear layers around each norm (see `dytune.refit`); after "linear" the
            model cannot be reverted in place.
        sink_weight: weight of each sequence's first token (the attention sink) in the calibration fits.
        refit_ridge: ridge strength of the "linear" refit's least-squares solves, relative to the mean diagonal
            of each solve's Gram matrix (`dytune.refit.ridge_solve`); larger trades zero-shot fit for a smaller gain.
        refit_ridge_to: what that ridge pulls towards: "zero", or "original" (each DyT's own affine fit for
            the maps its consumers absorb, the original weights for the output projections).
    """
    from dytune import hf_registration

    if hf_registration.is_dyt_model(model):
        raise DytuneError("this model is already DyT-converted; call dytune.revert(model) first to re-convert")
    if refit_ridge < 0:
        raise DytuneError(f"refit_ridge must be >= 0, got {refit_ridge}")
    kinds = parse_kinds(norms)
    strategy, constant = _parse_alpha_init(alpha_init)
    sites = find_norms(model)
    selected = [s for s in sites if s.kind in kinds]
    if not selected:
        raise DytuneError(f"no norm layer of kind {', '.join(kinds)} in {type(model).__name__}; found kinds: "
                          + ", ".join(sorted({s.kind for s in sites})))
    refit = calibration_refit if strategy == "calibrated" and keep_affine else "none"
    report = ConversionReport(alpha_init=str(alpha_init), per_channel=per_channel, kinds=list(kinds), refit=refit,
                              refit_ridge=refit_ridge if refit == "linear" else None,
                              refit_ridge_to=refit_ridge_to if refit == "linear" else None)
    fitted: dict[str, tuple[DyT, float]] = {}
    if strategy == "calibrated":
        from dytune.calibrate import calibrate_sites

        batches = _calibration_batches(model, tokenizer, calibration, calibration_max_length)
        fitted, report.calibration_tokens = calibrate_sites(
            model, selected, batches, per_channel=per_channel, keep_affine=keep_affine,
            method=calibration_method, refit=refit, sink_weight=sink_weight, ridge=refit_ridge,
            ridge_to=refit_ridge_to,
            max_tokens=calibration_max_tokens, progress=progress,
            install=lambda site, dyt: _set_module(model, site.name, dyt),
        )
    originals: dict[str, nn.Module] = {}
    for site in sites:
        if site.kind not in kinds:
            report.layers.append(LayerReport(site.name, site.kind, site.norm_type, converted=False))
            continue
        if strategy == "calibrated":
            dyt, err = fitted[site.name]
        else:
            alpha = paper_alpha(site.kind, site.hidden_size) if strategy == "paper" else constant
            dyt, err = make_dyt(site, alpha, per_channel=per_channel, keep_affine=keep_affine), None
        originals[site.name] = site.module
        _set_module(model, site.name, dyt)
        a = dyt.alpha.detach()
        report.layers.append(LayerReport(site.name, site.kind, site.norm_type, converted=True,
                                         alpha=float(a.mean()), alpha_min=float(a.min()), alpha_max=float(a.max()),
                                         fit_error=err))
    hf_registration.mark_converted(model, sites=[s for s in sites if s.name in originals], originals=originals,
                                   report=report)
    return report


def revert(model: nn.Module) -> nn.Module:
    """Put the original norm layers back (only possible in the process that converted the model)."""
    from dytune import hf_registration

    if model.config.dyt.get("refit") == "linear":
        raise DytuneError("this model was calibrated with refit='linear', which changed its linear layers: putting "
                          "the norms back would not give the original model; load the original again instead")
    originals = hf_registration.original_norms(model)
    for name, module in originals.items():
        _set_module(model, name, module)
    hf_registration.unmark_converted(model)
    return model


def dyt_modules(model: nn.Module) -> list[tuple[str, DyT]]:
    """All DyT layers of a model, with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DyT)]
