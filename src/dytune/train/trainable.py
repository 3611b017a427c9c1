"""Training modes (which tensors train) and optimizer parameter groups.

    full      every parameter
    lora      LoRA adapters only (norms / DyT frozen: the original study's recipe)
    lora+dyt  LoRA adapters + every norm layer's parameters (DyT alpha/gamma/beta, or the LayerNorm twin's
              weight/bias), registered as PEFT `modules_to_save` so they are saved in the adapter and reloaded.
              (Unfreezing them by hand after `get_peft_model` trains them but leaves them out of the adapter.)
    dyt-only  only the norm layers' parameters

Parameter groups: alpha and gamma/beta get their own learning-rate multipliers and no weight decay (alpha is
the sensitive one); other tensors follow nanoGPT's rule (decay iff `dim() >= 2`).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import torch
from torch import nn

from dytune.dyt import DyT
from dytune.errors import DytuneError

_LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    **{t: _LLAMA_TARGETS for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                                   "olmo", "olmo2", "smollm3", "granite")},
}


def base_model_type(model: nn.Module) -> str:
    dyt = getattr(model.config, "dyt", None)
    return dyt["base_model_type"] if dyt else model.config.model_type


def is_norm_module(module: nn.Module) -> bool:
    """DyT, or a LayerNorm/RMSNorm of any family (the trainable 'norm' of the LayerNorm twin)."""
    if isinstance(module, (DyT, nn.LayerNorm)):
        return True
    return type(module).__name__.endswith(("RMSNorm", "LayerNorm", "RmsNorm"))


def norm_module_names(model: nn.Module, norm: str) -> list[str]:
    """Names of the modules whose parameters 'the norm' means: DyT layers, or (LayerNorm twin) the norms of the
    kinds dytune would convert, so both arms of a comparison train the same positions."""
    if norm == "dyt":
        names = [n for n, m in model.named_modules() if isinstance(m, DyT)]
        if not names:
            raise DytuneError("norm: dyt but the model has no DyT layer (conversion did not happen?)")
        return names
    from dytune.norms import DEFAULT_KINDS, find_norms

    return [s.name for s in find_norms(model) if s.kind in DEFAULT_KINDS]


def default_targets(model: nn.Module) -> list[str]:
    model_type = base_model_type(model)
    if model_type not in DEFAULT_LORA_TARGETS:
        raise DytuneError(f"no default LoRA targets for model type {model_type!r}: set lora_target_modules "
                          f"(known defaults: {', '.join(sorted(DEFAULT_LORA_TARGETS))})")
    return list(DEFAULT_LORA_TARGETS[model_type])


def _adaptable_names(model: nn.Module) -> list[str]:
    from transformers.pytorch_utils import Conv1D

    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D, nn.Embedding))]


def check_targets(model: nn.Module, targets: list[str]) -> None:
    """Every target must match at least one layer (PEFT stays silent when only some match)."""
    names = _adaptable_names(model)
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        raise DytuneError(f"LoRA target module(s) {', '.join(missing)} match no layer of this "
                          f"{base_model_type(model)} model; its linear layers are named: {', '.join(leaves)}")


@dataclass
class ModeResult:
    model: nn.Module  # the model to train (a PeftModel in the LoRA modes)
    norm_names: list[str]  # the norm modules, named in the base model
    targets: list[str] | None  # LoRA targets


def apply_mode(model: nn.Module, mode: str, norm: str, *, lora_r: int = 16, lora_alpha: float = 32,
               lora_dropout: float = 0.05, lora_targets: list[str] | None = None,
               extra_trainable: list[str] | None = None) -> ModeResult:
    """Freeze / unfreeze / wrap `model` for `mode`; returns the model to train.

    `extra_trainable`: modules that must train in every mode (embeddings resized for new template tokens).
    """
    norm_names = norm_module_names(model, norm)
    extra = list(extra_trainable or [])
    if mode in ("full", "dyt-only"):
        for name, param in model.named_parameters():
            module = name.rpartition(".")[0]
            param.requires_grad_(mode == "full" or module in norm_names
                                 or any(module == e or module.startswith(e + ".") for e in extra))
        _check_trainable(model, mode, norm_names)
        return ModeResult(model, norm_names, None)
    from peft import LoraConfig, get_peft_model

    targets = list(lora_targets) if lora_targets else default_targets(model)
    check_targets(model, targets)
    save = (norm_names if mode == "lora+dyt" else []) + extra
    config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets,
                        modules_to_save=save or None, task_type="CAUSAL_LM",
                        fan_in_fan_out=base_model_type(model) == "gpt2")  # GPT-2's Conv1D stores W transposed
    for param in model.parameters():
        param.requires_grad_(False)
    peft_model = get_peft_model(model, config)
    _check_trainable(peft_model, mode, norm_names)
    return ModeResult(peft_model, norm_names, targets)


def _check_trainable(model: nn.Module, mode: str, norm_names: list[str]) -> None:
    """Fail loudly if the trainable set is not what the mode promises (e.g. DyT silently re-frozen)."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise DytuneError(f"mode {mode}: no parameter is trainable")
    if mode in ("lora+dyt", "dyt-only"):
        for name in norm_names:
            if not any(f"{name}." in t for t in trainable):
                raise DytuneError(f"mode {mode}: norm layer {name} is not trainable")
    if mode == "lora" and any(".modules_to_save." in t and any(f"{n}." in t for n in norm_names)
                              for t in trainable):
        raise DytuneError("mode lora: norm layers must stay frozen")


# -- parameter groups --------------------------------------------------------------------------------------
def classify_parameters(model: nn.Module) -> dict[str, str]:
    """Trainable parameter name -> group: alpha | affine (norm gamma/beta) | decay | no_decay."""
    norm_params: dict[int, str] = {}
    for module in model.modules():
        if is_norm_module(module):
            for pname, param in module.named_parameters(recurse=False):
                norm_params[id(param)] = "alpha" if isinstance(module, DyT) and pname == "alpha" else "affine"
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        groups[name] = norm_params.get(id(param)) or ("decay" if param.dim() >= 2 else "no_decay")
    return groups


def freeze_early_layers(model: nn.Module, share: float) -> list[str]:
    """Freeze the first `floor(share x blocks)` blocks and every parameter the model uses before its first block
    (token and position embeddings, an embedding norm; a tied LM head is the input embedding, so it is frozen
    too): backward then stops at the first block that trains. Returns the names of the tensors frozen here."""
    from dytune._blocks import StopForward, find_blocks, record_calls, unwrap

    base = unwrap(model)
    _, blocks = find_blocks(base)
    n = math.floor(share * len(blocks) + 1e-9)
    if n == 0:
        return []
    frozen = {id(p) for block in blocks[:n] for p in block.parameters()}
    ran_before: list[nn.Module] = []  # modules with their own parameters that run before block 0
    owners = [m for m in base.modules() if next(m.parameters(recurse=False), None) is not None]
    handles = [m.register_forward_pre_hook(lambda mod, args: ran_before.append(mod)) for m in owners]
    vocab = base.get_input_embeddings().weight.shape[0]
    device = next(base.parameters()).device
    try:
        with torch.no_grad(), record_calls([blocks[0]], outputs=False, stop=True):
            try:
                base(input_ids=torch.arange(4, device=device).remainder(vocab)[None], use_cache=False)
            except StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
    frozen |= {id(p) for m in ran_before for p in m.parameters(recurse=False)}
    names = []
    for name, param in model.named_parameters():
        if id(param) in frozen and param.requires_grad:
            param.requires_grad_(False)
            names.append(name)
    return names


def param_groups(model: nn.Module, lr: float, weight_decay: float, alpha_lr_multiplier: float = 1.0,
                 affine_lr_multiplier: float = 1.0, alpha_lr_relative: bool = False,
                 lr_multipliers: dict[str, float] | None = None) -> list[dict]:
    """Optimizer groups with names; empty groups are left out.

    `alpha_lr_relative`: one group per DyT alpha with its learning rate scaled by that alpha's current mean
    |value|, so that an Adam step changes every alpha by about the same *fraction* (calibrated alphas of one
    model span 0.02 to 12: one absolute rate is too large for some layers and too small for others).
    `lr_multipliers`: {glob over parameter names: multiplier}, the first match wins, applied on top of the
    group's rate; a group is split by multiplier (named `decay*0.1`, ...). Multiplier 0 freezes the tensor
    (`freeze_zero_multipliers`: out of the optimizer, `requires_grad` off), so it stays bit-identical and costs no
    gradient. A glob with a nonzero multiplier that matches no trainable parameter is an error."""
    settings = {
        "decay": (lr, weight_decay),
        "no_decay": (lr, 0.0),
        "alpha": (lr * alpha_lr_multiplier, 0.0),
        "affine": (lr * affine_lr_multiplier, 0.0),
    }
    globs = lr_multipliers or {}
    freeze_zero_multipliers(model, globs, check=False)  # the run froze them already; direct callers too
    classes = classify_parameters(model)
    multiplier = _match_multipliers(list(classes), {g: m for g, m in globs.items() if m > 0})
    members: dict[tuple[str, float], list[torch.nn.Parameter]] = {}
    params = dict(model.named_parameters())
    for name, group in classes.items():
        members.setdefault((group, multiplier[name]), []).append(params[name])
    groups = []
    for (group, mult), tensors in sorted(members.items(), key=lambda kv: (list(settings).index(kv[0][0]), -kv[0][1])):
        rate, decay = settings[group]
        label = group if mult == 1.0 else f"{group}*{mult:g}"
        if group == "alpha" and alpha_lr_relative:
            for i, alpha in enumerate(tensors):
                scale = max(float(alpha.detach().abs().mean()), 1e-3)
                groups.append({"name": f"{label}.{i}", "params": [alpha], "lr": rate * mult * scale,
                               "weight_decay": 0.0})
        else:
            groups.append({"name": label, "params": tensors, "lr": rate * mult, "weight_decay": decay})
    return groups


def freeze_zero_multipliers(model: nn.Module, lr_multipliers: dict[str, float] | None, *,
                            check: bool = True) -> list[str]:
    """Turn `requires_grad` off for every trainable tensor whose first matching `lr_multipliers` glob is 0:
    autograd then skips its gradient (and backward stops where nothing earlier trains). With `check`, a glob that
    matches no trainable parameter is an error. Returns the names frozen here."""
    if not any(m == 0 for m in (lr_multipliers or {}).values()):
        return []
    params = dict(model.named_parameters())
    multiplier = _match_multipliers(list(classify_parameters(model)), lr_multipliers, check=check)
    names = [name for name, mult in multiplier.items() if mult == 0]
    for name in names:
        params[name].requires_grad_(False)
    return names


def _match_multipliers(names: list[str], globs: dict[str, float], check: bool = True) -> dict[str, float]:
    """Each parameter name's multiplier: the first glob that matches it, else 1 (PEFT/DDP prefixes tolerated)."""
    out, used = {}, set()
    for name in names:
        out[name] = 1.0
        for glob, mult in globs.items():
            if fnmatch.fnmatchcase(name, glob) or fnmatch.fnmatchcase(name, "*." + glob):
                out[name] = mult
                used.add(glob)
                break
    unused = [g for g in globs if g not in used]
    if unused and check:
        example = names[0] if names else "(none)"
        raise DytuneError(f"lr_multipliers: {', '.join(map(repr, unused))} match no trainable parameter "
                          f"(names look like {example!r})")
    return out
