"""DyT conversion, one folder (PEFT's method layout):

    config.py          ConvertConfig: every conversion option and default (the API, `dytune convert`'s flags, and
                       the conversion keys of `dytune train`); no torch
    model.py           convert(model, config) -> Conversion (the report, the replaced norms); revert
    report.py          ConversionReport, LayerReport
    calibration_data   calibration texts (a file, a data source, the built-in text) -> token batches
    init/              how DyT parameters are chosen: fixed (constant / paper alpha), calibrate, refit

Names below load their module on first use, so `from dytune.conversion.config import ConvertConfig` imports no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConvertConfig": "config", "parse_kinds": "config", "ALL_KINDS": "config", "DEFAULT_KINDS": "config",
    "ConversionReport": "report", "LayerReport": "report",
    "Conversion": "model", "convert": "model", "revert": "model", "dyt_modules": "model", "conversion_of": "model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
