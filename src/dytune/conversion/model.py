"""Model surgery: replace a model's LayerNorm / RMSNorm layers with DyT, and put them back.

    conversion = dytune.convert(model, tokenizer=tok)                    # calibrated alpha (the default)
    conversion = dytune.convert(model, ConvertConfig(alpha_init="paper"))  # or keyword arguments, the same fields
    print(conversion.report.table())
    conversion.revert(model)                                             # the original norms back

gamma/beta are copied exactly from each norm's effective scale/shift (Gemma's `1 + weight` included). The
returned `Conversion` holds what was replaced (the original norm modules) and the per-layer report.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from dytune import hf_registration
from dytune.conversion.calibration_data import calibration_batches, calibration_texts_from_source
from dytune.conversion.config import ConvertConfig, parse_alpha_init, parse_kinds
from dytune.conversion.init.calibrate import calibrate_sites
from dytune.conversion.init.fixed import make_dyt, paper_alpha
from dytune.conversion.report import ConversionReport, LayerReport
from dytune.dyt import DyT
from dytune.errors import DytuneError
from dytune.norms import find_norms


@dataclass
class Conversion:
    """What `convert` did to a model: its settings, the per-layer report, and the norms it replaced."""

    config: ConvertConfig
    report: ConversionReport
    originals: dict[str, nn.Module] = field(default_factory=dict, repr=False)  # site name -> the replaced norm
    source: str = ""  # the model's name, as recorded in config.dyt["source"]

    def revert(self, model: nn.Module) -> nn.Module:
        """Put the original norms back into `model` (the model this conversion converted)."""
        if self.report.refit == "linear":
            raise DytuneError("this model was calibrated with refit='linear', which changed its linear layers: "
                              "putting the norms back would not give the original model; load the original again")
        for name, module in self.originals.items():
            model.set_submodule(name, module)
        hf_registration.unmark_converted(model)
        _CONVERSIONS.pop(model, None)
        return model

    def __getattr__(self, name: str) -> Any:
        # the report's fields read through: `convert` returned the report itself before it returned a Conversion
        if name.startswith("__") or name == "report":
            raise AttributeError(name)
        return getattr(self.report, name)


# the Conversion of every model converted in this process, for `revert(model)` (weak: a dropped model is forgotten)
_CONVERSIONS: weakref.WeakKeyDictionary[nn.Module, Conversion] = weakref.WeakKeyDictionary()


def convert(
    model: nn.Module,
    config: ConvertConfig | None = None,
    *,
    tokenizer: Any = None,
    calibration: str | Sequence[str] | Sequence[dict] | None = None,
    source: str | None = None,
    progress: bool = True,
    **options: Any,
) -> Conversion:
    """Replace the selected norm layers of `model` with DyT, in place.

    Args:
        config: a `ConvertConfig` (every option and its default); `**options` are the same fields as keyword
            arguments (they override `config`'s).
        tokenizer: for calibrated alpha (tokenizes the calibration texts).
        calibration: a data source (the `ConvertConfig.calibration` field), or the data itself: texts, or token
            batches (dicts of input_ids / attention_mask). Default: a built-in text.
        source: the model's name to record in `config.dyt["source"]` and the model card (default: the model's
            `name_or_path`).
        progress: progress bars.
    """
    texts = None
    if calibration is not None and not isinstance(calibration, str):
        texts = calibration
    elif calibration is not None:
        options["calibration"] = calibration
    try:
        config = dataclasses.replace(config, **options) if config is not None else ConvertConfig(**options)
    except TypeError as err:  # an unknown keyword
        valid = ", ".join(f.name for f in dataclasses.fields(ConvertConfig))
        raise DytuneError(f"{err}; conversion options are: {valid}") from None
    if hf_registration.is_dyt_model(model):
        raise DytuneError("this model is already DyT-converted; call dytune.revert(model) first to re-convert")
    kinds = parse_kinds(config.norms)
    strategy, constant = parse_alpha_init(config.alpha_init)
    sites = find_norms(model)
    selected = [s for s in sites if s.kind in kinds]
    if not selected:
        raise DytuneError(f"no norm layer of kind {', '.join(kinds)} in {type(model).__name__}; found kinds: "
                          + ", ".join(sorted({s.kind for s in sites})))
    refit = config.refit
    report = ConversionReport(alpha_init=str(config.alpha_init), per_channel=config.per_channel, kinds=list(kinds),
                              form=config.form, refit=refit,
                              refit_ridge=config.refit_ridge if refit == "linear" else None,
                              refit_ridge_to=config.refit_ridge_to if refit == "linear" else None)
    fitted: dict[str, tuple[DyT, float]] = {}
    if strategy == "calibrated":
        if texts is None and config.calibration:
            texts = calibration_texts_from_source(config.calibration, tokenizer, config.calibration_samples)
        batches = calibration_batches(model, tokenizer, texts, config.calibration_max_length)
        fitted, report.calibration_tokens = calibrate_sites(
            model, selected, batches, per_channel=config.per_channel, keep_affine=config.keep_affine,
            method=config.calibration_method, refit=refit, sink_weight=config.sink_weight, ridge=config.refit_ridge,
            ridge_to=config.refit_ridge_to, max_tokens=config.calibration_max_tokens, progress=progress,
            form=config.dyt_form)
    originals: dict[str, nn.Module] = {}
    for site in sites:
        if site.kind not in kinds:
            report.layers.append(LayerReport(site.name, site.kind, site.norm_type, converted=False))
            continue
        if strategy == "calibrated":
            dyt, err = fitted[site.name]
        else:
            alpha = paper_alpha(site.kind, site.hidden_size) if strategy == "paper" else constant
            dyt = make_dyt(site, alpha, per_channel=config.per_channel, keep_affine=config.keep_affine,
                           form=config.dyt_form)
            err = None
        originals[site.name] = site.module
        model.set_submodule(site.name, dyt)
        a = dyt.alpha.detach()
        report.layers.append(LayerReport(site.name, site.kind, site.norm_type, converted=True,
                                         alpha=float(a.mean()), alpha_min=float(a.min()), alpha_max=float(a.max()),
                                         fit_error=err))
    hf_registration.mark_converted(model, sites=[s for s in sites if s.name in originals], report=report)
    source = source or getattr(model.config, "_name_or_path", "") or ""
    model.config.dyt["source"] = source
    conversion = Conversion(config=config, report=report, originals=originals, source=source)
    _CONVERSIONS[model] = conversion
    return conversion


class NotConvertedHere(DytuneError, ValueError):
    """`revert` of a model this process did not convert (a ValueError too, as revert raised before)."""


def conversion_of(model: nn.Module) -> Conversion:
    """The `Conversion` of a model converted in this process."""
    conversion = _CONVERSIONS.get(model)
    if conversion is None:
        raise NotConvertedHere("this model was not converted in this process (a DyT model loaded from disk has no original "
                          "norms to put back): load the original model instead")
    return conversion


def revert(model: nn.Module) -> nn.Module:
    """Put the original norm layers back (only possible in the process that converted the model)."""
    return conversion_of(model).revert(model)


def dyt_modules(model: nn.Module) -> list[tuple[str, DyT]]:
    """All DyT layers of a model, with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DyT)]
