"""Save DyT models as ordinary Hugging Face directories (safetensors) with a model card; load them back."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from dytune.errors import DytuneError

_CARD = """---
library_name: transformers
tags:
- dytune
- dynamic-tanh
- normalization-free
base_model: {base}
---

# {title}

This model is **{base}** with its normalization layers replaced by {form},
converted with [dytune](https://pypi.org/project/dytune/).

- Converted norm layers: {n_layers} ({kinds})
- alpha initialisation: {alpha_init}{per_channel}
- gamma/beta: copied from the original norms' learned scale/shift
{extra}
## Loading

The checkpoint has `model_type: "dytune"`: transformers needs dytune's registration to rebuild the DyT
layers, so `import dytune` first:

```python
import dytune  # registers the DyT model type with AutoModelForCausalLM
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("{path_hint}")   # or dytune.load("{path_hint}")
```

Without `import dytune`, `from_pretrained` fails with "model type dytune not recognised" rather than
silently loading LayerNorms with wrong outputs.

{portable}Serving engines that only know the standard architectures (vLLM, llama.cpp, TGI) **cannot run this model**:
DyT is not one of their layers. Use transformers (eager or `torch.compile`).
"""


_FORMS = {
    "dyt": 'Dynamic Tanh\n(DyT, `y = gamma * tanh(alpha * x) + beta`; Zhu et al., "Transformers without Normalization", CVPR 2025)',
    "fakeln": "a fixed per-layer scale\n(FakeLN, `y = gamma * alpha * x + beta` with alpha = 1 / sigma measured on data, x centred where the norm "
              "was a LayerNorm; Heimersheim 2024, Baroni et al. 2025)",
}

_PORTABLE_CARD = """Or, **without dytune installed**: this directory carries its modeling code (`modeling_dytune.py`,
`configuration_dytune.py`; torch and transformers only), which transformers runs when you allow it:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{path_hint}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{path_hint}", trust_remote_code=True)  # it reads config.json too
```

Read those two files before you trust them, as with any remote code.

"""


def write_model_card(model: torch.nn.Module, out_dir: str | Path, extra: str = "", *, portable: bool = False) -> None:
    dyt = getattr(model.config, "dyt", None) or {}
    base = dyt.get("source") or getattr(model.config, "_name_or_path", "") or "unknown"
    card = _CARD.format(
        base=base, title=f"{Path(base).name or base} (DyT)", n_layers=len(dyt.get("layers", [])),
        form=_FORMS.get(dyt.get("form", "dyt"), _FORMS["dyt"]),
        kinds=", ".join(dyt.get("kinds", [])), alpha_init=dyt.get("alpha_init", "?"),
        per_channel=" (per-channel)" if dyt.get("per_channel") else "",
        extra=(extra.strip() + "\n") if extra else "", path_hint=str(out_dir),
        portable=_PORTABLE_CARD.format(path_hint=str(out_dir)) if portable else "",
    )
    Path(out_dir, "README.md").write_text(card)


@contextmanager
def atomic_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `out_dir`; on success it replaces `out_dir` in one rename, on error
    it is removed, so a reader never sees a half-written directory."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save(model: torch.nn.Module, out_dir: str | Path, tokenizer=None, *, overwrite: bool = False,  # noqa: ANN001
         card_extra: str = "", extra_files: dict[str, dict] | None = None, portable: bool = False) -> Path:
    """Save `model` (DyT or plain) as safetensors + config (+ tokenizer, model card), atomically.

    The directory is written under a temporary name and renamed into place, so an interrupted save never
    leaves a half-written model behind. `portable`: also write the DyT modeling code into the directory
    (config.json's `auto_map`), so that `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`
    loads it where dytune is not installed (see `dytune.portable`).
    """
    from dytune import portable as portable_code
    from dytune.hf_registration import is_dyt_model

    out = Path(out_dir)
    if portable and not is_dyt_model(model):
        raise DytuneError("--portable is for DyT models (it writes the DyT modeling code); this model has no DyT "
                          "layers, so it already loads without dytune: save it without --portable")
    if out.exists() and not overwrite:
        raise DytuneError(f"{out} already exists: choose another output directory or pass --overwrite")
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if is_dyt_model(model):
            if portable:
                portable_code.write_portable_code(tmp, model.config.dyt["base_model_type"])
            else:
                portable_code.drop_portable_code(Path(tmp, "config.json"))
            write_model_card(model, tmp, card_extra, portable=portable)
        for name, payload in (extra_files or {}).items():
            Path(tmp, name).write_text(json.dumps(payload, indent=2))
    return out


def load(name: str | os.PathLike, **kwargs):  # noqa: ANN201 - returns a transformers PreTrainedModel
    """Load a model by any name `dytune.models` resolves; DyT checkpoints come back as DyT."""
    from dytune.models import load_model

    return load_model(name, **kwargs)
