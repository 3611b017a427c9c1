"""Register dytune's model type with transformers when transformers loads, so that `import dytune` stays cheap.

`import dytune` then `AutoModelForCausalLM.from_pretrained(dyt_dir)` must work, but registering imports torch and
transformers (seconds), which `dytune --help` must not pay. So `import dytune` registers at once only when
transformers is already imported; otherwise it leaves a finder on `sys.meta_path` that registers right after the
first `import transformers` finishes (Python's import system has no "after import" hook of its own).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any


def register() -> None:
    """Register the "dytune" model type with transformers' Auto classes (idempotent)."""
    from dytune.hf_registration import register as register_model_type

    register_model_type()


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self._finding = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "transformers" or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(fullname)  # what the other finders would return
        finally:
            self._finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            if "dytune.hf_registration" not in sys.modules:  # else it registers itself when its import ends
                register()

        spec.loader.exec_module = exec_then_register
        return spec


def register_when_transformers_loads() -> None:
    if "transformers" in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterTransformers())
