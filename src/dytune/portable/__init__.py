"""Portable DyT checkpoints: the modeling code travels in the directory, so a user without dytune loads it with
`AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)` (the Hub's remote-code mechanism).

`configuration_dytune.py` and `modeling_dytune.py` here are the files written; they are templates, never
imported by dytune itself (they build their classes at import, for the architecture named in BASE_MODEL_TYPE).
With dytune imported, transformers prefers dytune's own registered classes and never runs these files.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

CODE_FILES = ("configuration_dytune.py", "modeling_dytune.py")
AUTO_MAP = {"AutoConfig": "configuration_dytune.DyTuneConfig",
            "AutoModelForCausalLM": "modeling_dytune.DyTuneForCausalLM"}
_PLACEHOLDER = 'BASE_MODEL_TYPE = "llama"'


def write_portable_code(directory: str | Path, base_model_type: str) -> None:
    """Write the modeling code for `base_model_type` into a saved DyT directory and point config.json at it."""
    directory = Path(directory)
    for name in CODE_FILES:
        text = resources.files(__package__).joinpath(name).read_text()
        if name == "configuration_dytune.py":
            if _PLACEHOLDER not in text:
                raise RuntimeError(f"{name}: the {_PLACEHOLDER!r} line is missing")  # a broken dytune install
            text = text.replace(_PLACEHOLDER, f"BASE_MODEL_TYPE = {base_model_type!r}", 1)
        (directory / name).write_text(text)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = dict(AUTO_MAP)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def drop_portable_code(config_path: str | Path) -> None:
    """Remove an `auto_map` pointing at dytune's portable code from a config.json written without that code
    (a portable model loaded and re-saved plainly would otherwise point at files that are not there)."""
    config_path = Path(config_path)
    config = json.loads(config_path.read_text())
    if config.get("auto_map") == AUTO_MAP:
        del config["auto_map"]
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
