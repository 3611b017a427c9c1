import pytest
import torch

from dytune.dyt import DyT


def test_formula_matches_definition():
    torch.manual_seed(0)
    dyt = DyT(8, alpha_init=0.7, bias=True)
    with torch.no_grad():
        dyt.weight.uniform_(0.5, 1.5)
        dyt.bias.uniform_(-0.3, 0.3)
    x = torch.randn(3, 5, 8)
    expected = dyt.weight * torch.tanh(0.7 * x) + dyt.bias
    torch.testing.assert_close(dyt(x), expected)


def test_no_bias_and_alpha_shapes():
    scalar = DyT(16, alpha_init=2.0, bias=False)
    assert scalar.bias is None
    assert scalar.alpha.shape == (1,)  # never 0-dim: FSDP rejects scalar parameters
    per_channel = DyT(16, alpha_init=torch.linspace(0.1, 1.6, 16), per_channel=True)
    assert per_channel.alpha.shape == (16,)
    x = torch.ones(2, 16)
    torch.testing.assert_close(per_channel(x)[0], torch.tanh(torch.linspace(0.1, 1.6, 16)))


def test_elementwise_no_token_statistics():
    """Perturbing one channel of one token changes exactly that output element (unlike a norm)."""
    torch.manual_seed(1)
    dyt = DyT(32, alpha_init=0.9)
    x = torch.randn(2, 6, 32)
    y = dyt(x)
    x2 = x.clone()
    x2[1, 3, 7] += 5.0
    diff = (dyt(x2) - y).abs() > 0
    assert diff.sum().item() == 1 and diff[1, 3, 7]
    norm = torch.nn.LayerNorm(32)
    assert ((norm(x2) - norm(x)).abs() > 1e-7).sum().item() > 1  # the norm, by contrast, mixes channels


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_parameters_stay_float32_under_cast(dtype):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), DyT(8, alpha_init=12.6))
    model.to(dtype)
    assert model[0].weight.dtype == dtype
    assert {p.dtype for p in model[1].parameters()} == {torch.float32}
    out = model(torch.randn(2, 8, dtype=dtype))
    assert out.dtype == dtype


def test_small_alpha_update_survives_bf16_model():
    """At alpha=12.6 bf16 spacing is 0.0625: a 1e-3 step must not round away."""
    dyt = DyT(4, alpha_init=12.6).to(torch.bfloat16)
    with torch.no_grad():
        dyt.alpha.add_(1e-3)
    assert abs(dyt.alpha.item() - 12.601) < 1e-5


def test_alpha_gets_gradient():
    dyt = DyT(4, alpha_init=0.5)
    dyt(torch.randn(3, 4)).sum().backward()
    assert dyt.alpha.grad is not None and dyt.alpha.grad.abs().item() > 0


@pytest.mark.parametrize("kernel", ["reference", "fused"])
def test_state_dict_and_formula_are_the_same_on_both_kernels(kernel):
    import dytune.dyt as dyt_module

    previous = dyt_module.set_kernel(kernel)
    try:
        dyt = DyT(8, alpha_init=torch.linspace(0.2, 0.9, 8), per_channel=True, bias=True)
        assert {k: tuple(v.shape) for k, v in dyt.state_dict().items()} == {"alpha": (8,), "weight": (8,), "bias": (8,)}
        assert {v.dtype for v in dyt.state_dict().values()} == {torch.float32}
        x = torch.randn(2, 3, 8)
        want = dyt.weight * torch.tanh(dyt.alpha * x) + dyt.bias
        torch.testing.assert_close(dyt(x), want, rtol=1e-6, atol=1e-6)
    finally:
        dyt_module.set_kernel(previous)
