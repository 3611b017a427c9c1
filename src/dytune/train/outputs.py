"""What a finished run leaves behind: `final/` (merged, loadable by `dytune.load`), `adapter/` (LoRA modes, its
base a saved DyT model in `base/`), the generation config's EOS list, `summary.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from dytune.saving import atomic_directory


def end_of_turn_ids(tokenizer: Any, chat_template: str | None = None) -> list[int]:
    """EOS ids a chat model must stop on: the tokenizer's EOS plus the special token(s) the chat template
    writes right after an assistant turn (`<|im_end|>` for ChatML)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    try:
        from dytune.data.templates import resolve_template

        template, _ = resolve_template(tokenizer, chat_template)
        marker = "\ue001"
        text = tokenizer.apply_chat_template([{"role": "user", "content": "x"},
                                              {"role": "assistant", "content": marker}],
                                             chat_template=template, tokenize=False)
        tail = text[text.index(marker) + 1:]
        special = set(tokenizer.all_special_ids)
        for token in tokenizer(tail, add_special_tokens=False)["input_ids"]:
            if token in special:
                if token not in ids:
                    ids.append(token)
                break  # the first special token after the answer ends the turn
    except Exception:  # noqa: BLE001 - no usable template: the tokenizer's EOS alone
        pass
    return ids


def set_generation_eos(model: nn.Module, tokenizer: Any, chat_template: str | None = None) -> list[int]:
    ids = end_of_turn_ids(tokenizer, chat_template)
    config = getattr(model, "generation_config", None)
    if config is not None and ids:
        config.eos_token_id = ids if len(ids) > 1 else ids[0]
        if config.pad_token_id is None and tokenizer.pad_token_id is not None:
            config.pad_token_id = tokenizer.pad_token_id
    return ids


def save_adapter(peft_model: nn.Module, out_dir: Path, base_dir: Path) -> Path:
    """Save the adapter (LoRA + modules_to_save, so trained DyT too) pointing at the saved DyT base, atomically."""
    with atomic_directory(out_dir) as tmp:
        peft_model.save_pretrained(tmp)
        config_path = tmp / "adapter_config.json"
        config = json.loads(config_path.read_text())
        # Pointing at the LayerNorm original would make AutoPeftModelForCausalLM load LayerNorms and drop alpha.
        config["base_model_name_or_path"] = str(Path(base_dir).resolve())
        config_path.write_text(json.dumps(config, indent=2))
    return out_dir


_LAYERNORM_CARD = """---
library_name: transformers
tags:
- dytune
- layernorm-baseline
base_model: {base}
---

# {title} (LayerNorm baseline)

This model is **{base}** post-trained with its own normalization layers (LayerNorm / RMSNorm) kept: the
baseline ("LayerNorm twin") that a DyT run of [dytune](https://pypi.org/project/dytune/) is compared with. It has
no Dynamic Tanh layers and loads with plain transformers:

```python
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("{path}")
```

- Post-trained with {trained}
"""


def write_layernorm_card(out_dir: Path, base: str, trained: str) -> None:
    """The model card of a LayerNorm twin's `final/`: the baseline, not a DyT conversion."""
    card = _LAYERNORM_CARD.format(base=base, title=Path(base).name or base, path=out_dir, trained=trained)
    (Path(out_dir) / "README.md").write_text(card)
