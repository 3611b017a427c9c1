"""The old import path of the conversion code, kept for `from dytune.convert import convert`: use
`dytune.convert(...)` or `dytune.conversion` (this module re-exports it)."""

from __future__ import annotations

import sys
import types

from dytune.conversion.config import ConvertConfig, parse_kinds  # noqa: F401
from dytune.conversion.init.fixed import make_dyt, paper_alpha  # noqa: F401
from dytune.conversion.model import Conversion, convert, dyt_modules, revert  # noqa: F401
from dytune.conversion.report import ConversionReport, LayerReport  # noqa: F401


class _CallableModule(types.ModuleType):
    # importing this module binds `dytune.convert` to it (Python sets a package's attribute to each submodule it
    # imports), which would hide the function `dytune.convert`: calling the module calls the function
    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
