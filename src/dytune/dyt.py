"""Dynamic Tanh (DyT), the drop-in replacement for LayerNorm / RMSNorm.

    y = weight * tanh(alpha * x) + bias                       form "tanh" (default)
    y = weight * (alpha * xc) + bias, xc = x - mean(x) or x   form "linear" (FakeLN: a fixed 1/sigma scale)

Zhu, Chen, He, LeCun, Liu, "Transformers without Normalization", CVPR 2025 (arXiv:2503.10622). The linear
form is the "FakeLN" of Heimersheim 2024 and Baroni et al. 2025 (a norm whose per-token divisor is frozen to
one measured sigma per layer); `center` subtracts the token mean first, as the LayerNorm it replaces did.
`weight` (gamma) and `bias` (beta) keep the names the replaced norm used, so the norm's learned scale and
shift map onto them one to one. DyT is elementwise: unlike a norm it computes no per-token statistic (the
linear form's mean, with `center`, is a fixed linear projection, not a normalisation).

Two ways to compute it, chosen per call (`set_kernel`, or the environment variable `DYTUNE_DYT_KERNEL`):

* `reference`: the formula in PyTorch ops (a float32 temporary per op).
* `fused`: one pass over the input, forward and backward, as the custom ops `dytune::dyt_forward` /
  `dytune::dyt_backward`. Their bodies are `torch.compile`d into one vectorised C++ loop each, with tanh
  as Eigen's [9/8] rational (`rational_tanh`, relative error within 1e-6 of `torch.tanh`: tested here,
  measured on every float32 in docs/speed.md). Float64 inputs use `torch.tanh`. The
  backward recomputes tanh from the saved input instead of keeping a float32 copy of the activation.
* `auto` (default): `fused` for CPU inputs of at least `FUSED_MIN_ELEMENTS` elements, `reference`
  otherwise (a decode step's few hundred elements cost less than the compiled kernel's call overhead; CUDA
  stays on `reference` until `benchmarks/gpu_check.sh` has measured it).
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import Tensor, nn

from dytune.errors import DytuneError

KERNELS = ("auto", "fused", "reference")
FORMS = ("tanh", "linear")
FUSED_MIN_ELEMENTS = 8192  # below this the compiled kernel's ~20 us call overhead outweighs its saving
_kernel = os.environ.get("DYTUNE_DYT_KERNEL", "auto")  # checked at the first call (`_use_fused`)


def set_kernel(name: str) -> str:
    """Choose how DyT is computed from now on (`auto`, `fused`, `reference`); returns the previous choice."""
    global _kernel
    if name not in KERNELS:
        raise DytuneError(f"unknown DyT kernel {name!r}: expected one of {', '.join(KERNELS)}")
    previous, _kernel = _kernel, name
    return previous


def get_kernel() -> str:
    return _kernel


def rational_tanh(x: Tensor) -> Tensor:
    """tanh as Eigen's float32 [9/8] rational (`ptanh_float`, Eigen/src/Core/arch/Default/
    GenericPacketMathFunctions.h, coefficients from rminimax). The clamp is Eigen's FMA one, where the
    compiled kernel (multiply-adds fused) reaches exactly 1; evaluated op by op it stays just below 1.
    NaN stays NaN, +-inf gives +-1, subnormals pass through as x."""
    x = x.clamp(-8.01773357391357422, 8.01773357391357422)
    x2 = x * x
    p = x2 * 1.394553628e-8 + 2.102733560e-5
    p = p * x2 + 3.520756727e-3
    p = p * x2 + 1.340216100e-1
    p = (x2 * x) * p + x
    q = x2 * 8.015776984e-7 + 3.326951409e-4
    q = q * x2 + 2.597254514e-2
    q = q * x2 + 4.673548340e-1
    q = q * x2 + 1.0
    return p / q


def _tanh(a: Tensor) -> Tensor:
    return torch.tanh(a) if a.dtype == torch.float64 else rational_tanh(a)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for float64 inputs


def _forward_2d(x: Tensor, alpha: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x (N, C); alpha, weight, bias (C,)."""
    cd = _compute_dtype(x)
    return (_tanh(alpha.to(cd) * x.to(cd)) * weight.to(cd) + bias.to(cd)).to(x.dtype)


def _backward_2d(grad: Tensor, x: Tensor, alpha: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """grad, x (N, C); alpha, weight (C,) -> dx (N, C) and per-channel dalpha, dweight, dbias (C,)."""
    cd = _compute_dtype(x)
    a, xf, g = alpha.to(cd), x.to(cd), grad.to(cd)
    t = _tanh(a * xf)
    g_dt = g * weight.to(cd) * (1 - t * t)  # dL/d(alpha x)
    return (g_dt * a).to(x.dtype), (g_dt * xf).sum(0), (g * t).sum(0), g.sum(0)


# FMA contraction (inductor's default is off) makes the rational's 13 multiply-adds 13 instructions, not 26.
_COMPILE = dict(dynamic=True, fullgraph=True, options={"cpp.enable_floating_point_contract_flag": "fast"})
_compiled: dict[str, object] = {}


def _kernel_fn(name: str):  # noqa: ANN202
    if name not in _compiled:  # compiled lazily: importing dytune must not start inductor
        _compiled[name] = torch.compile({"forward": _forward_2d, "backward": _backward_2d}[name], **_COMPILE)
    return _compiled[name]


def _run_kernel(name: str, *tensors: Tensor):  # noqa: ANN202
    # Grad mode and autocast are normalised so that each kernel compiles once per input dtype (dynamo
    # recompiles on either, and stops at 8 variants); the custom op's autograd formula does the rest.
    with torch.no_grad(), torch.autocast(tensors[0].device.type, enabled=False):
        return _kernel_fn(name)(*(t.detach() for t in tensors))


@torch.library.custom_op("dytune::dyt_forward", mutates_args=())
def _dyt_forward(x: Tensor, alpha: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    c = x.shape[-1]
    bias = weight.new_zeros(c) if bias is None else bias
    return _run_kernel("forward", x.reshape(-1, c), alpha.expand(c).contiguous(), weight, bias).reshape(x.shape)


@_dyt_forward.register_fake
def _(x: Tensor, alpha: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("dytune::dyt_backward", mutates_args=())
def _dyt_backward(grad: Tensor, x: Tensor, alpha: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    c = x.shape[-1]
    dx, dalpha, dweight, dbias = _run_kernel("backward", grad.reshape(-1, c), x.reshape(-1, c),
                                             alpha.expand(c).contiguous(), weight)
    dalpha = dalpha if alpha.numel() == c else dalpha.sum().reshape(1)
    return dx.reshape(x.shape), dalpha.to(alpha.dtype), dweight.to(weight.dtype), dbias.to(weight.dtype)


@_dyt_backward.register_fake
def _(grad: Tensor, x: Tensor, alpha: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(alpha), torch.empty_like(weight), torch.empty_like(weight)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - torch.library's signature
    x, alpha, weight, bias = inputs
    ctx.save_for_backward(x, alpha, weight)  # x in its own dtype: no float32 copy of the activation
    ctx.has_bias = bias is not None


def _autograd_backward(ctx, grad: Tensor):  # noqa: ANN001, ANN202
    x, alpha, weight = ctx.saved_tensors
    dx, dalpha, dweight, dbias = _dyt_backward(grad.contiguous(), x, alpha, weight)
    return dx, dalpha, dweight, dbias if ctx.has_bias else None


_dyt_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def dyt_fused(x: Tensor, alpha: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """weight * tanh(alpha * x) + bias in one pass (forward and backward); x of any shape (..., C)."""
    return _dyt_forward(x, alpha, weight, bias)


def dyt_reference(x: Tensor, alpha: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The formula in plain PyTorch ops, evaluated in float32 (float64 for float64 inputs)."""
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()  # float32 params promote to float64
    y = torch.tanh(alpha * xf) * weight
    if bias is not None:
        y = y + bias
    return y if y.dtype == x.dtype else y.to(x.dtype)


def dyt_linear(x: Tensor, alpha: Tensor, weight: Tensor, bias: Tensor | None = None, center: bool = False) -> Tensor:
    """The linear form, weight * (alpha * xc) + bias, in float32 (float64 for float64 inputs); xc is x less its
    mean over the last dimension with `center`, else x."""
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if center:
        xf = xf - xf.mean(-1, keepdim=True)
    y = weight * (alpha * xf)
    if bias is not None:
        y = y + bias
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _use_fused(x: Tensor) -> bool:
    if _kernel == "reference" or x.dim() == 0:
        return False
    if _kernel == "fused":
        return True
    if _kernel == "auto":
        if torch.compiler.is_exporting():  # an exported program runs on any shape: no size test (it would be a guard)
            return False
        return x.device.type == "cpu" and x.numel() >= FUSED_MIN_ELEMENTS
    raise DytuneError(f"DYTUNE_DYT_KERNEL={_kernel!r}: expected one of {', '.join(KERNELS)}")


class DyT(nn.Module):
    """Dynamic Tanh over the last dimension.

    Args:
        normalized_shape: size of the last dimension (the hidden size).
        alpha_init: initial alpha; a float, or a tensor of shape `[normalized_shape]` for per-channel alpha.
        per_channel: learn one alpha per channel instead of one scalar.
        bias: whether to learn a shift beta (False when replacing an RMSNorm, which has none).
        form: "tanh" (DyT) or "linear" (FakeLN: `weight * (alpha * x) + bias`, alpha a fixed 1/sigma to start).
        center: with the linear form, subtract each token's mean first (replacing a LayerNorm).

    alpha is stored with shape `[1]` (or `[normalized_shape]`), never 0-dim: FSDP rejects scalar parameters.
    All parameters are kept in float32 whatever dtype the model is cast to, and the formula is evaluated in
    float32: at alpha near 12.6 bf16's spacing is 0.0625, so a small update would round away and alpha
    would silently never train.
    """

    form = "tanh"  # class defaults: a DyT pickled before forms existed unpickles as tanh
    center = False

    def __init__(
        self,
        normalized_shape: int,
        alpha_init: float | torch.Tensor = 1.0,
        per_channel: bool = False,
        bias: bool = True,
        form: str = "tanh",
        center: bool = False,
    ) -> None:
        super().__init__()
        if form not in FORMS:
            raise DytuneError(f"unknown DyT form {form!r}: expected one of {', '.join(FORMS)}")
        if center and form != "linear":
            raise DytuneError("center=True is for the linear form only (tanh does not subtract a mean)")
        self.form = form
        self.center = bool(center)
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
        if self.form == "linear":  # plain torch ops: the fused kernel computes tanh only
            return dyt_linear(x, self.alpha, self.weight, self.bias, self.center)
        if _use_fused(x):
            try:
                return dyt_fused(x, self.alpha, self.weight, self.bias)
            except Exception as err:  # noqa: BLE001 - e.g. no C++ compiler for inductor
                if _kernel == "fused":
                    raise
                warnings.warn(f"dytune: the fused DyT kernel failed ({type(err).__name__}: {err}); using the "
                              "reference formula from now on", stacklevel=2)
                set_kernel("reference")
        return dyt_reference(x, self.alpha, self.weight, self.bias)

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
        form = f", form=linear, center={self.center}" if self.form == "linear" else ", form=tanh"
        return f"{self.normalized_shape}, alpha={alpha}, bias={self.bias is not None}{form}"
