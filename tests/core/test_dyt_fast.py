"""The fused DyT (custom ops, compiled loop, rational tanh) against the reference formula: values, gradients,
edge values, dtypes, autocast, torch.compile, a converted model's logits, and the `auto` dispatch."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

import dytune
import dytune.dyt as dyt_module
from dytune.dyt import DyT, dyt_fused, dyt_reference, rational_tanh, set_kernel
from dytune.errors import DytuneError

TANH_REL_TOL = 1e-6  # the stated bound on the rational tanh's relative error


@pytest.fixture(autouse=True)
def restore_kernel():
    previous = dyt_module.get_kernel()
    yield
    set_kernel(previous)


def _params(c: int, per_channel: bool, bias: bool, seed: int = 0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    alpha = (torch.rand(c if per_channel else 1, generator=gen) + 0.3).to(dtype)
    weight = (torch.rand(c, generator=gen) + 0.5).to(dtype)
    beta = (torch.randn(c, generator=gen) * 0.2).to(dtype) if bias else None
    return alpha, weight, beta


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs() / want.double().abs().clamp_min(1e-30)).max().item()


def test_rational_tanh_relative_error_on_a_dense_grid():
    x = torch.cat([torch.linspace(-12, 12, 2_000_001), torch.logspace(-30, 1, 100_001), -torch.logspace(-30, 1, 1001)])
    truth = torch.tanh(x.double())
    for name, got in [("fused", dyt_fused(x.reshape(1, -1), torch.ones(1), torch.ones(x.numel()))[0]),
                      ("eager ops", rational_tanh(x))]:
        assert _rel_err(got, truth) <= TANH_REL_TOL, name
    assert _rel_err(rational_tanh(x), torch.tanh(x)) <= TANH_REL_TOL  # and against torch's own float32 tanh


def test_edge_values():
    tiny = torch.finfo(torch.float32).tiny
    x = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 10.5, -10.5, 20.0, -1e30, 3e38,
                      tiny, tiny / 8, -tiny / 1024, 1.4e-45, 7.9, -7.95, 1e-4])
    want = torch.tanh(x)
    fused = dyt_fused(x.reshape(1, -1), torch.ones(1), torch.ones(x.numel()))[0]
    for got in (fused, rational_tanh(x)):  # compiled (multiply-adds fused) and op by op
        assert torch.isnan(got[4]) and not torch.isnan(got[[i for i in range(len(x)) if i != 4]]).any()
        finite = ~torch.isnan(want)
        assert (got[finite] - want[finite]).abs().max().item() <= 1.2e-7  # two float32 steps below 1
        assert (got[finite].abs() <= 1).all()
        torch.testing.assert_close(got[10:14], x[10:14], rtol=0, atol=0)  # tanh(x) = x at and below tiny
        assert got[0].item() == 0.0
    # the compiled kernel saturates exactly where float32 tanh does
    assert fused[[2, 5, 7, 9]].tolist() == [1.0] * 4 and fused[[3, 6, 8]].tolist() == [-1.0] * 3


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_equals_reference_float32(per_channel, bias):
    alpha, weight, beta = _params(96, per_channel, bias)
    x = torch.randn(3, 50, 96, generator=torch.Generator().manual_seed(1)) * 3
    got = dyt_fused(x, alpha, weight, beta)
    want = dyt_reference(x.double(), alpha.double(), weight.double(), None if beta is None else beta.double())
    # tanh within 1e-6 relative, times weight, plus bias: bounded by 1e-6 * |weight * tanh| + float32 rounding
    bound = TANH_REL_TOL * (weight.double() * torch.tanh(alpha.double() * x.double())).abs() + 2e-7 * want.abs() + 1e-7
    assert ((got.double() - want).abs() <= bound).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("per_channel", [False, True])
def test_fused_gradients_equal_reference(dtype, per_channel):
    alpha, weight, beta = _params(64, per_channel, bias=True, seed=2)
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 33, 64, generator=gen) * 2).to(dtype)
    upstream = torch.randn(4, 33, 64, generator=gen).to(dtype)
    grads = {}
    for name, fn in [("fused", dyt_fused), ("reference", dyt_reference)]:
        leaves = [x.clone().requires_grad_(True)] + [p.clone().requires_grad_(True) for p in (alpha, weight, beta)]
        out = fn(*leaves)
        assert out.dtype == dtype
        (out.double() * upstream.double()).sum().backward()
        grads[name] = [out.detach()] + [leaf.grad for leaf in leaves]
    assert [g.dtype for g in grads["fused"]] == [dtype, dtype, torch.float32, torch.float32, torch.float32]
    # bf16: both round the same float32 value to bf16 at the end, so they agree to one bf16 step at most
    rtol = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float64: 1e-12}[dtype]
    for name, got, want in zip(["y", "dx", "dalpha", "dweight", "dbias"], grads["fused"], grads["reference"]):
        scale = want.double().abs().max().item()
        err = (got.double() - want.double()).abs().max().item()
        assert err <= rtol * scale + (1e-6 if dtype != torch.float64 else 1e-12), (name, err, scale)


@pytest.mark.parametrize("per_channel", [False, True])
def test_gradcheck_float64(per_channel):
    gen = torch.Generator().manual_seed(4)
    c = 5
    x = torch.randn(2, 3, c, dtype=torch.float64, generator=gen, requires_grad=True)
    alpha = (torch.rand(c if per_channel else 1, dtype=torch.float64, generator=gen) + 0.5).requires_grad_(True)
    weight = (torch.rand(c, dtype=torch.float64, generator=gen) + 0.5).requires_grad_(True)
    beta = torch.randn(c, dtype=torch.float64, generator=gen).requires_grad_(True)
    assert torch.autograd.gradcheck(dyt_fused, (x, alpha, weight, beta))
    assert torch.autograd.gradcheck(lambda x, a, w: dyt_fused(x, a, w, None), (x, alpha, weight))


def test_module_dispatch_auto_fused_reference(monkeypatch):
    calls = []
    real = dyt_module.dyt_fused
    monkeypatch.setattr(dyt_module, "dyt_fused", lambda *a: calls.append(a[0].numel()) or real(*a))
    layer = DyT(64, alpha_init=0.7)
    small = torch.randn(2, 8, 64)  # a decode step's size: the reference formula
    large = torch.randn(4, dyt_module.FUSED_MIN_ELEMENTS // 64, 64)
    set_kernel("auto")
    layer(small), layer(large)
    assert calls == [large.numel()]
    set_kernel("fused")
    layer(small)
    set_kernel("reference")
    layer(large)
    assert calls == [large.numel(), small.numel()]
    with pytest.raises(DytuneError, match="unknown DyT kernel 'fast': expected one of auto, fused, reference"):
        set_kernel("fast")


def test_a_bad_environment_variable_is_a_clear_error():
    from dytune.testing import run_in_fresh_process

    out = run_in_fresh_process(
        "import torch, dytune.dyt as d\n"
        "try:\n    d.DyT(4)(torch.ones(2, 4))\nexcept d.DytuneError as e:\n    print(e)\n",
        env={**os.environ, "DYTUNE_DYT_KERNEL": "triton"})
    assert out.strip() == "DYTUNE_DYT_KERNEL='triton': expected one of auto, fused, reference"


def test_a_failing_kernel_falls_back_to_the_reference_once(monkeypatch):
    def broken(name):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(dyt_module, "_kernel_fn", broken)
    set_kernel("auto")
    layer = DyT(64, alpha_init=0.7)
    x = torch.randn(4, dyt_module.FUSED_MIN_ELEMENTS // 64, 64)
    with pytest.warns(UserWarning, match="fused DyT kernel failed .*no C\\+\\+ compiler.*reference formula"):
        y = layer(x)
    torch.testing.assert_close(y, dyt_reference(x, layer.alpha, layer.weight, layer.bias))
    assert dyt_module.get_kernel() == "reference"
    set_kernel("fused")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        layer(x)


def test_bf16_weights_and_autocast_keep_float32_parameters_and_move_alpha():
    torch.manual_seed(0)
    set_kernel("fused")
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), DyT(32, alpha_init=0.5), torch.nn.Linear(32, 4))
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    assert {p.dtype for p in bf16[1].parameters()} == {torch.float32}
    x = torch.randn(16, 32)
    for net, ctx, inp in [(bf16, torch.autocast("cpu", enabled=False), x.bfloat16()),
                          (copy.deepcopy(model), torch.autocast("cpu", dtype=torch.bfloat16), x)]:
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        before = net[1].alpha.detach().clone()
        for _ in range(3):
            with ctx:
                loss = net(inp).float().pow(2).mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
        assert net[1].alpha.dtype == torch.float32
        assert (net[1].alpha.detach() - before).abs().item() > 1e-4  # alpha moves
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model[0](x)  # bf16 under autocast
        assert h.dtype == torch.bfloat16 and model[1](h).dtype == torch.bfloat16


def test_torch_compile_of_the_fused_module_matches_eager():
    set_kernel("auto")
    layer = DyT(64, alpha_init=0.6)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.3, 0.3)
    compiled = torch.compile(copy.deepcopy(layer))
    x = torch.randn(8, dyt_module.FUSED_MIN_ELEMENTS // 64, 64)
    outs = []
    for net in (layer, compiled):
        xi = x.clone().requires_grad_(True)
        y = net(xi)
        (y * x).sum().backward()
        outs.append([y.detach(), xi.grad, net.alpha.grad if net is layer else compiled._orig_mod.alpha.grad])
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_converted_model_logits_unchanged_with_the_fused_path(tmp_path):
    from transformers import AutoModelForCausalLM

    from dytune.testing import tiny_model

    tiny_model("llama").save_pretrained(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny")
    dytune.convert(model, alpha_init="constant:0.8", progress=False)
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(5))
    logits = {}
    for kernel in ("reference", "fused"):
        set_kernel(kernel)
        with torch.no_grad():
            logits[kernel] = model(input_ids=ids).logits
    torch.testing.assert_close(logits["fused"], logits["reference"], rtol=1e-5, atol=2e-5)
    assert not torch.equal(logits["fused"], logits["reference"])  # the two paths really differ (tanh rounding)
