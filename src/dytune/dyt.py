"""Dynamic Tanh (DyT), the drop-in replacement for LayerNorm / RMSNorm.

    y = weight * tanh(alpha * x) + bias

Zhu, Chen, He, LeCun, Liu, "Transformers without Normalization", CVPR 2025 (arXiv:2503.10622).
`weight` (gamma) and `bias` (beta) keep the names the replaced norm used, so the norm's learned scale and
shift map onto them one to one. DyT is elementwise: unlike a norm it computes no per-token statistic.
"""

from __future__ import annotations

import torch
from torch import nn


class DyT(nn.Module):
    """Dynamic Tanh over the last dimension.

    Args:
        normalized_shape: size of the last dimension (the hidden size).
        alpha_init: initial alpha; a float, or a tensor of shape `[normalized_shape]` for per-channel alpha.
        per_channel: learn one alpha per channel instead of one scalar.
        bias: whether to learn a shift beta (False when replacing an RMSNorm, which has none).

    alpha is stored with shape `[1]` (or `[normalized_shape]`), never 0-dim: FSDP rejects scalar parameters.
    All parameters are kept in float32 whatever dtype the model is cast to, and the formula is evaluated in
    float32: at alpha near 12.6 bf16's spacing is 0.0625, so a small update would round away and alpha
    would silently never train.
    """

    def __init__(
        self,
        normalized_shape: int,
        alpha_init: float | torch.Tensor = 1.0,
        per_channel: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.normalized_shape = int(normalized_shape)
        self.per_channel = bool(per_channel)
        alpha_shape = (self.normalized_shape,) if per_channel else (1,)
        # Kept as plain Python numbers, not a buffer: models built on the meta device (transformers'
        # from_pretrained) must be able to re-initialise alpha from real values.
        if isinstance(alpha_init, torch.Tensor):
            values = [float(v) for v in alpha_init.detach().cpu().flatten().tolist()]
        else:
            values = [float(alpha_init)]
        self.alpha_init: list[float] = values * alpha_shape[0] if len(values) == 1 else values
        self.alpha = nn.Parameter(torch.empty(alpha_shape, dtype=torch.float32))
        self.weight = nn.Parameter(torch.empty(self.normalized_shape, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(self.normalized_shape, dtype=torch.float32)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.copy_(torch.tensor(self.alpha_init, dtype=torch.float32, device=self.alpha.device))
            self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.alpha * x.float()) * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch's signature
        # Casts such as `model.to(torch.bfloat16)` reach every tensor through `_apply`. Keep DyT's own
        # tensors float32 (see the class docstring) from the float32 originals, not from the rounded cast;
        # device moves still apply.
        originals = {name: t.data for name, t in [*self._parameters.items(), *self._buffers.items()]
                     if t is not None and t.dtype == torch.float32}
        super()._apply(fn, recurse)
        for store in (self._parameters, self._buffers):
            for name, tensor in store.items():
                if tensor is not None and name in originals and tensor.dtype != torch.float32:
                    tensor.data = originals[name].to(device=tensor.device, dtype=torch.float32)
                    if getattr(tensor, "grad", None) is not None:
                        tensor.grad.data = tensor.grad.data.float()
        return self

    def extra_repr(self) -> str:
        if self.per_channel or self.alpha.is_meta:
            alpha = "per-channel" if self.per_channel else "?"
        else:
            alpha = f"{self.alpha.detach().float().item():.4g}"
        return f"{self.normalized_shape}, alpha={alpha}, bias={self.bias is not None}"
