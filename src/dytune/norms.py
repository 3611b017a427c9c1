"""Find the normalization layers of any HF causal LM and classify each by where it sits in the block.

The class is decided from a traced forward pass, not from the module's name: names lie across families
(Llama's `post_attention_layernorm` is the FFN *input* norm; Gemma2's is a post/sandwich norm on the
attention output). Kinds:

  attn   normalises the input of an attention sub-layer (pre-norm; also a norm shared by a parallel
         attention and MLP, as Falcon's, which is GPT-NeoX's attention-branch norm with the MLP reading it too)
  ffn    normalises the input of an MLP sub-layer (pre-norm; also GPT-NeoX's parallel-residual MLP norm, OPT's
         in-block `final_layer_norm` and BLOOM's `post_attention_layernorm`)
  post   normalises a sub-layer's output and feeds no sub-layer itself (Gemma2/3 sandwich norms, OLMo2 post-norms)
  final  after the last block, before the LM head
  embed  before the first block (e.g. BLOOM's embedding LayerNorm)
  qk     inside the attention module (Qwen3/OLMo2 QK-norm); its own kind, not converted by default
  inner  inside another sub-layer (e.g. an MLP-internal norm)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from dytune._blocks import find_blocks as _find_blocks
from dytune._blocks import layer_index as _layer_index
from dytune.conversion.config import ALL_KINDS, DEFAULT_KINDS  # noqa: F401 - re-exported
from dytune.dyt import DyT
from dytune.errors import DytuneError

NormKind = Literal["attn", "ffn", "post", "final", "embed", "qk", "inner"]

_ATTN_WORDS = ("attn", "attention")
_MLP_WORDS = ("mlp", "feed_forward", "ffn", "moe")


@dataclass
class NormSite:
    """One normalization layer of a model, as found by `find_norms`."""

    name: str  # dotted module path, e.g. "model.layers.0.input_layernorm"
    module: nn.Module = field(repr=False)
    kind: str  # one of ALL_KINDS
    layer: int | None  # index of the decoder block, None outside the blocks
    norm_type: Literal["layernorm", "rmsnorm"]
    hidden_size: int
    weight_offset: float  # 1.0 for Gemma's `(1 + weight)` convention, else 0.0
    has_bias: bool
    eps: float

    def gamma(self) -> torch.Tensor:
        """The norm's effective learned scale, exactly as applied in its forward."""
        weight = getattr(self.module, "weight", None)
        if weight is None:
            return torch.ones(self.hidden_size)
        return weight.detach().float() + self.weight_offset

    def beta(self) -> torch.Tensor | None:
        bias = getattr(self.module, "bias", None)
        return None if bias is None else bias.detach().float()

    def reference_output(self, x: torch.Tensor) -> torch.Tensor:
        """What this norm computes (float32), from its parameters; used to fit DyT to it."""
        x = x.float()
        if self.norm_type == "layernorm":
            x = x - x.mean(-1, keepdim=True)
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.gamma().to(x.device)
        beta = self.beta()
        return y if beta is None else y + beta.to(x.device)


def _is_norm_candidate(module: nn.Module) -> bool:
    if isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
        return True
    name = type(module).__name__
    return name.endswith(("RMSNorm", "LayerNorm", "RmsNorm", "Norm")) and not isinstance(module, DyT)


def _eps_of(module: nn.Module) -> float:
    for attr in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 1e-5


def _probe(module: nn.Module) -> tuple[str, float, int] | None:
    """Identify a norm numerically: returns (norm_type, weight_offset, hidden_size) or None if unknown."""
    weight = getattr(module, "weight", None)
    if weight is not None and (not isinstance(weight, torch.Tensor) or weight.dim() != 1):
        return None
    hidden = weight.shape[0] if weight is not None else getattr(module, "normalized_shape", (None,))[-1]
    if hidden is None or (weight is not None and weight.is_meta):
        return None
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(4, hidden, generator=gen) * 3 + 0.5).to(device=device, dtype=dtype)
    eps = _eps_of(module)
    with torch.no_grad():
        try:
            out = module(x).float()
        except Exception:  # noqa: BLE001 - a module we cannot call this way is simply not a known norm
            return None
        xf = x.float()
        w = weight.detach().float() if weight is not None else torch.ones(hidden, device=device)
        bias = getattr(module, "bias", None)
        b = bias.detach().float() if isinstance(bias, torch.Tensor) else 0.0
        tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
        for norm_type in ("rmsnorm", "layernorm"):
            centred = xf - xf.mean(-1, keepdim=True) if norm_type == "layernorm" else xf
            normed = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
            for offset in (0.0, 1.0):
                ref = normed * (w + offset) + b
                if torch.allclose(out, ref, atol=tol * max(1.0, ref.abs().max().item()), rtol=tol):
                    return norm_type, offset, int(hidden)
    return None


def _sublayer_role(child_name: str, child: nn.Module | None = None) -> str | None:
    low = child_name.lower()
    if any(w in low for w in _ATTN_WORDS):
        return "attn"
    if any(w in low for w in _MLP_WORDS) or isinstance(child, nn.Linear):  # OPT: fc1/fc2 sit in the block itself
        return "mlp"
    return None


def _first_tensor(value) -> torch.Tensor | None:  # noqa: ANN001
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def find_norms(model: nn.Module, *, strict: bool = True) -> list[NormSite]:
    """Every normalization layer of `model`, in forward order, classified by position.

    Raises `DytuneError` if the model has none, or (with `strict`) if a module looks like a norm
    (class name ending in `Norm`) but is neither a LayerNorm nor an RMSNorm by its arithmetic.
    """
    candidates = {n: m for n, m in model.named_modules() if n and _is_norm_candidate(m)}
    known: dict[str, tuple[str, float, int]] = {}
    unknown = []
    for name, module in candidates.items():
        probe = _probe(module)
        if probe is None:
            unknown.append(f"{name} ({type(module).__name__})")
        else:
            known[name] = probe
    if unknown and strict:
        raise DytuneError("these modules look like normalization layers but are neither LayerNorm nor RMSNorm, "
                          "so dytune cannot convert them: " + ", ".join(unknown) + ". Supported: nn.LayerNorm "
                          "and the RMSNorm family (weight, optional bias, optional Gemma-style 1+weight).")
    if not known:
        raise DytuneError(f"{type(model).__name__} has no LayerNorm/RMSNorm layers to convert"
                          + (f" (found only: {', '.join(unknown)})" if unknown else ""))
    events = _trace(model, known)
    blocks_prefix, blocks = _find_blocks(model)
    sites = []
    for name in sorted(known, key=lambda n: events["order"].get(n, 1e9)):
        norm_type, offset, hidden = known[name]
        module = candidates[name]
        layer = _layer_index(name, blocks_prefix)
        kind = _classify(name, layer, blocks_prefix, events)
        sites.append(NormSite(name=name, module=module, kind=kind, layer=layer, norm_type=norm_type,
                              hidden_size=hidden, weight_offset=offset,
                              has_bias=isinstance(getattr(module, "bias", None), torch.Tensor), eps=_eps_of(module)))
    return sites


def _trace(model: nn.Module, norm_names: dict) -> dict:
    """Run a 4-token forward pass and record, in call order, norms and attention/MLP sub-layer calls."""
    blocks_prefix, blocks = _find_blocks(model)
    # ("norm", name, input, output) | ("start", name, role, input) | ("end", name, role, output); the tensors are
    # kept alive so that identity checks are exact
    timeline: list[tuple] = []
    handles = []
    modules = dict(model.named_modules())

    def first_input(args, kwargs):
        return _first_tensor(args) if args else _first_tensor(kwargs.get("hidden_states"))

    def norm_hook(name):
        def hook(mod, args, kwargs, output):
            timeline.append(("norm", name, first_input(args, kwargs), _first_tensor(output)))
        return hook

    def sub_pre(name, role):
        def hook(mod, args, kwargs):
            timeline.append(("start", name, role, first_input(args, kwargs)))
        return hook

    def sub_post(name, role):
        def hook(mod, args, kwargs, output):
            out = _first_tensor(output)
            timeline.append(("end", name, role, out))
        return hook

    for name in norm_names:
        handles.append(modules[name].register_forward_hook(norm_hook(name), with_kwargs=True))
    for i, block in enumerate(blocks):
        for child_name, child in block.named_children():
            role = _sublayer_role(child_name, child)
            if role is not None and not _is_norm_candidate(child):
                full = f"{blocks_prefix}.{i}.{child_name}"
                handles.append(child.register_forward_pre_hook(sub_pre(full, role), with_kwargs=True))
                handles.append(child.register_forward_hook(sub_post(full, role), with_kwargs=True))
    param = next(model.parameters())
    vocab = getattr(model.config, "vocab_size", 8) or 8
    input_ids = (torch.arange(4, device=param.device) % vocab).unsqueeze(0)
    try:
        with torch.no_grad():
            # an explicit mask: GPT-2-style models whose pad id is among ids 0..3 would warn without one
            model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    order = {}
    for i, ev in enumerate(timeline):
        if ev[0] == "norm":
            order.setdefault(ev[1], i)
    return {"timeline": timeline, "order": order}


def _classify(name: str, layer: int | None, blocks_prefix: str, events: dict) -> str:
    timeline = events["timeline"]
    if layer is None:
        first_block = next((i for i, ev in enumerate(timeline) if ev[0] == "start"), None)
        pos = events["order"].get(name)
        return "embed" if pos is not None and first_block is not None and pos < first_block else "final"
    rel = name[len(blocks_prefix) + 1:].split(".")[1:]  # path inside the block
    if len(rel) > 1:
        return "qk" if _sublayer_role(rel[0]) == "attn" else "inner"
    pos = events["order"].get(name)
    if pos is None:
        return "inner"  # never called in the forward pass
    _, _, norm_input, norm_output = timeline[pos]
    block = f"{blocks_prefix}.{layer}."
    # Pre-norm: its output is the very input tensor of a sub-layer of its block (the first one, for a norm shared
    # by a parallel attention and MLP), whatever it normalised (BLOOM's attention output includes the residual).
    consumer = next((ev for ev in timeline[pos + 1:] if ev[0] == "start" and ev[1].startswith(block)
                     and norm_output is not None and ev[3] is norm_output), None)
    if consumer is not None:
        return "attn" if consumer[2] == "attn" else "ffn"
    # Post-norm: its input is the very output tensor of the sub-layer that just ended.
    last_end = next((ev for ev in reversed(timeline[:pos]) if ev[0] == "end"), None)
    same_block = last_end is not None and last_end[1].startswith(block)
    if same_block and norm_input is not None and last_end[3] is norm_input:
        return "post"
    next_start = next((ev for ev in timeline[pos + 1:] if ev[0] == "start"), None)
    if next_start is not None and next_start[1].startswith(block):
        return "attn" if next_start[2] == "attn" else "ffn"
    return "post"
