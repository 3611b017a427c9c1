"""dytune: convert Hugging Face causal LMs to Dynamic Tanh (DyT), post-train them, and compare.

    import dytune
    model = dytune.load("smollm2-135m")
    conversion = dytune.convert(model, tokenizer=dytune.load_tokenizer("smollm2-135m"))
    print(conversion.report.table())
    dytune.save(model, "smollm2-dyt", tokenizer)

`import dytune` is cheap (no torch): the names below load their module on first use. transformers learns the DyT
model type as soon as it is imported in a process that imported dytune (at once if it already was), so saved DyT
checkpoints load with plain `AutoModelForCausalLM.from_pretrained` after `import dytune`; `dytune.register()` does
the registration explicitly.
"""

from __future__ import annotations

import importlib
from typing import Any

from dytune._autoregister import register, register_when_transformers_loads  # noqa: F401 - dytune.register()

__version__ = "0.1.0"

_EXPORTS = {
    "ConvertConfig": "dytune.conversion.config",
    "Conversion": "dytune.conversion.model", "convert": "dytune.conversion.model",
    "revert": "dytune.conversion.model", "dyt_modules": "dytune.conversion.model",
    "ConversionReport": "dytune.conversion.report",
    "DyT": "dytune.dyt",
    "DytuneError": "dytune.errors",
    "EMBEDDED_DEFAULT": "dytune.models", "load_model": "dytune.models", "load_tokenizer": "dytune.models",
    "find_norms": "dytune.norms",
    "load": "dytune.saving", "save": "dytune.saving",
}

__all__ = sorted([*_EXPORTS, "register", "__version__"])


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dytune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


register_when_transformers_loads()
