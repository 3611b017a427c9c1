"""The auxiliary uniform-scale loss of Baroni et al. 2025, for training a model whose norms have a fixed scale.

A FakeLN site (`ConvertConfig(form="fakeln")`) divides every token by one sigma measured on data, so it is only
right for tokens whose scale is near that sigma. Baroni et al., "Transformers Don't Need LayerNorm at Inference
Time" (2025, arXiv:2507.02559) add a loss that pulls every token's scale at the final norm's input towards the
mean scale. The formula, from their code (submarat/removing-layer-norm, train.py, `CustomTrainer.compute_loss`):

    s_t    = sqrt(mean_c (h_tc - mean_c h_tc)^2 + 1e-5)        per-token std of the final norm's input h
    target = mean of s_t over positions that are neither position 0 nor an EOS token, with no gradient
    aux    = mean over all positions of (s_t - target)^2
    loss   = loss + aux_loss_weight * aux                       (aux_loss_weight 0.1 by default in their code)

Here the same formula is computed per converted site, with the std for a LayerNorm site and the RMS (no mean
subtracted) for an RMSNorm site, since that is what the replaced norm divided by; padding (attention mask 0)
is left out of both means and "position 0" is each sequence's first real token, which changes nothing on the
packed, unpadded batches of their code. `UniformScaleHooks` keeps each chosen site's input during the
student's forward; `uniform_scale_loss` is the formula on one tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from dytune.conversion.init.calibrate import first_positions, token_scale
from dytune.dyt import DyT
from dytune.errors import DytuneError

EPS = 1e-5  # their epsilon inside the square root


def uniform_scale_loss(hidden: Tensor, *, center: bool = True, input_ids: Tensor | None = None,
                       attention_mask: Tensor | None = None, exclude_token_ids: Iterable[int] = (),
                       eps: float = EPS, relative: bool = False) -> Tensor:
    """Baroni et al.'s auxiliary loss on one site's input `hidden` (B, T, C): the mean squared deviation of each
    token's scale from the mean scale of the ordinary tokens (float32 scalar, differentiable in `hidden`).

    center: the scale is the std (True: a LayerNorm site, their GPT-2 case) or the RMS (False: RMSNorm).
    input_ids, exclude_token_ids: tokens left out of the target (their EOS); the first token always is.
    attention_mask: padding is left out of the target and the mean.
    relative: dytune's variant, ((s_t / target) - 1)^2 averaged over the ordinary tokens only. Their absolute form
    depends on the model's residual scale (SmolLM2-135M's final norm input: 155 at the start, against a CE of 1.3,
    so any fixed weight is a different recipe per model), and it pulls the attention sink (position 0, ~50x the
    median scale there) towards the others, which the sink's attention role does not survive."""
    scale = token_scale(hidden, center, eps)  # (B, T), float32
    real = (torch.ones_like(scale, dtype=torch.bool) if attention_mask is None
            else attention_mask.to(scale.device).bool())
    ordinary = real & ~first_positions(scale.shape, attention_mask, scale.device).to(scale.device)
    excluded = list(exclude_token_ids)
    if input_ids is not None and excluded:
        ordinary &= ~torch.isin(input_ids.to(scale.device), torch.tensor(excluded, device=scale.device))
    with torch.no_grad():
        target = scale[ordinary].mean() if ordinary.any() else scale.new_tensor(1.0)  # their fallback
    if relative:
        return (scale / target.clamp_min(eps) - 1).pow(2)[ordinary].mean() if ordinary.any() else scale.sum() * 0
    return (scale - target).pow(2)[real].mean()


def _eos_ids(model: nn.Module) -> list[int]:
    eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, (list, tuple)) else [int(eos)]


class UniformScaleHooks:
    """Forward pre-hooks that keep the input of chosen DyT sites during a grad-enabled forward, and the loss on it.

        hooks = UniformScaleHooks(model)                       # once, on the converted (student) model
        out = model(**batch)                                   # each step: the student's forward
        loss = loss + 0.1 * hooks.loss(batch["input_ids"], batch.get("attention_mask"))

    kinds: the site kinds whose inputs count (config.dyt's "kind"); default the final norm, as in Baroni et al.
    (None: every converted site). exclude_token_ids: tokens left out of the target (default: the model's EOS).
    Only forwards with gradients enabled are recorded (so a no-grad teacher or evaluation forward of the same
    model changes nothing), and each such forward of `model` starts afresh. Under reentrant gradient
    checkpointing a site inside a checkpointed block runs its first forward without gradients: it records
    nothing and `loss` says so (the final norm sits outside the blocks)."""

    def __init__(self, model: nn.Module, kinds: Sequence[str] | None = ("final",),
                 exclude_token_ids: Iterable[int] | None = None, relative: bool = False) -> None:
        self.relative = relative
        spec = getattr(getattr(model, "config", None), "dyt", None)
        if not isinstance(spec, dict):
            raise DytuneError("the uniform-scale loss needs a converted model (config.dyt): run dytune.convert first")
        layers = {layer["name"]: layer for layer in spec["layers"] if kinds is None or layer["kind"] in kinds}
        self.centers: dict[str, bool] = {}
        self.inputs: dict[str, Tensor] = {}
        self._handles = []
        for name, module in model.named_modules():
            if not isinstance(module, DyT):
                continue
            layer = next((layer for key, layer in layers.items() if name == key or name.endswith("." + key)), None)
            if layer is not None:
                self.centers[name] = layer.get("norm_type") == "layernorm"
                self._handles.append(module.register_forward_pre_hook(self._keeper(name)))
        if not self.centers:
            converted = ", ".join(sorted({layer["kind"] for layer in spec["layers"]}))
            raise DytuneError(f"no converted site of kind {', '.join(kinds or ())} for the uniform-scale loss: "
                              f"this model's converted kinds are {converted}")
        self._handles.append(model.register_forward_pre_hook(self._start))
        self.exclude_token_ids = _eos_ids(model) if exclude_token_ids is None else list(exclude_token_ids)

    def _start(self, module: nn.Module, args: tuple) -> None:
        if torch.is_grad_enabled():
            self.inputs.clear()

    def _keeper(self, name: str):  # noqa: ANN202
        def keep(module: nn.Module, args: tuple) -> None:
            if torch.is_grad_enabled():
                self.inputs[name] = args[0]
        return keep

    def loss(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None) -> Tensor:
        """The mean over the chosen sites of `uniform_scale_loss` on what the last student forward fed them; the
        kept inputs are released."""
        missing = [name for name in self.centers if name not in self.inputs]
        if missing:
            raise DytuneError(f"no input with gradients was recorded at {', '.join(missing)}: call loss after the "
                              "student's forward (gradients on; with reentrant gradient checkpointing, only sites "
                              "outside the blocks, such as the final norm, record)")
        losses = [uniform_scale_loss(self.inputs[name], center=center, input_ids=input_ids,
                                     attention_mask=attention_mask, exclude_token_ids=self.exclude_token_ids,
                                     relative=self.relative)
                  for name, center in self.centers.items()]
        self.inputs.clear()
        return torch.stack([loss.to(losses[0].device) for loss in losses]).mean()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.inputs.clear()

    def __enter__(self) -> UniformScaleHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
