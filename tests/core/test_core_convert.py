import pytest
import torch

import dytune
from dytune.conversion.config import parse_kinds
from dytune.conversion.init.fixed import paper_alpha
from dytune.dyt import DyT
from dytune.errors import DytuneError
from dytune.norms import find_norms
from dytune.testing import tiny_model, tiny_tokenizer

IDS = torch.tensor([[1, 5, 9, 30, 2, 7, 11, 40]])

# architecture -> expected kinds in forward order (position-based, not name-based)
EXPECTED_KINDS = {
    "gpt2": ["attn", "ffn", "attn", "ffn", "final"],
    "gpt_neox": ["attn", "ffn", "attn", "ffn", "final"],  # parallel residual: both read the block input
    "llama": ["attn", "ffn", "attn", "ffn", "final"],  # Llama's post_attention_layernorm is the FFN input
    "qwen2": ["attn", "ffn", "attn", "ffn", "final"],
    "gemma": ["attn", "ffn", "attn", "ffn", "final"],
    "gemma2": ["attn", "post", "ffn", "post"] * 2 + ["final"],  # sandwich norms
    "qwen3": ["attn", "qk", "qk", "ffn"] * 2 + ["final"],
    "olmo2": ["qk", "qk", "post", "post"] * 2 + ["final"],
    "opt": ["attn", "ffn", "attn", "ffn", "final"],  # in-block final_layer_norm feeds fc1, a direct child of the block
    "bloom": ["embed", "attn", "ffn", "attn", "ffn", "final"],  # post_attention_layernorm normalises attn + residual
    "falcon": ["attn", "attn", "final"],  # one norm feeds both parallel branches: attn, like GPT-NeoX's attn norm
}


@pytest.mark.parametrize("arch", sorted(EXPECTED_KINDS))
def test_norms_classified_by_position(arch):
    sites = find_norms(tiny_model(arch))
    assert [s.kind for s in sites] == EXPECTED_KINDS[arch]


@pytest.mark.parametrize(("arch", "overrides", "kinds"), [
    ("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}, ["attn", "ffn"]),  # ln_attn, ln_mlp
    ("falcon", {}, ["attn"]),  # input_layernorm, shared by both branches
    ("falcon", {"parallel_attn": False}, ["attn", "ffn"]),
])
def test_parallel_branch_norms_are_classified_by_the_sublayer_they_feed(arch, overrides, kinds):
    """Both norms of a parallel block read the block input: the sub-layer that reads a norm's output decides."""
    sites = [s for s in find_norms(tiny_model(arch, **overrides)) if s.layer == 0]
    assert [s.kind for s in sites] == kinds


def test_gemma2_names_do_not_decide_kind():
    kinds = {s.name.split(".")[-1]: s.kind for s in find_norms(tiny_model("gemma2")) if s.layer == 0}
    assert kinds == {"input_layernorm": "attn", "post_attention_layernorm": "post",
                     "pre_feedforward_layernorm": "ffn", "post_feedforward_layernorm": "post"}


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama", "gemma2", "qwen3"])
def test_convert_replaces_selected_norms_and_copies_affine_exactly(arch):
    model = tiny_model(arch)
    sites = find_norms(model)
    expected = {s.name: (s.gamma().clone(), None if s.beta() is None else s.beta().clone(), s.kind) for s in sites}
    report = dytune.convert(model, alpha_init="constant:0.8")
    converted = dict(dytune.dyt_modules(model))
    for name, (gamma, beta, kind) in expected.items():
        module = model.get_submodule(name)
        if kind == "qk":  # not converted by default
            assert not isinstance(module, DyT)
            continue
        assert isinstance(module, DyT) and name in converted
        assert torch.equal(module.weight, gamma)  # Gemma's 1 + weight included
        if beta is None:
            assert module.bias is None
        else:
            assert torch.equal(module.bias, beta)
        assert module.alpha.item() == pytest.approx(0.8)
    assert len(report.converted) == sum(1 for _, _, k in expected.values() if k != "qk")
    # no norm of a convertible kind is left
    assert all(s.kind == "qk" for s in find_norms(model, strict=False)) if arch == "qwen3" else True


def test_converted_model_computes_the_dyt_formula():
    model = tiny_model("llama")
    site = next(s for s in find_norms(model) if s.kind == "final")
    dytune.convert(model, alpha_init=0.37)
    seen = {}
    model.get_submodule(site.name).register_forward_hook(lambda m, a, out: seen.update(x=a[0], y=out))
    model(IDS)
    expected = site.gamma() * torch.tanh(0.37 * seen["x"])
    torch.testing.assert_close(seen["y"], expected)


def test_norm_selection_and_qk_opt_in():
    model = tiny_model("qwen3")
    report = dytune.convert(model, alpha_init="paper", norms="attn,final")
    kinds = {layer.kind for layer in report.converted}
    assert kinds == {"attn", "final"}
    model = tiny_model("qwen3")
    report = dytune.convert(model, alpha_init="paper", norms="all")
    assert sum(layer.kind == "qk" for layer in report.converted) == 4
    assert isinstance(model.model.layers[0].self_attn.q_norm, DyT)
    assert model.model.layers[0].self_attn.q_norm.normalized_shape == 16  # head_dim


def test_paper_rule():
    assert paper_alpha("attn", 4096) == pytest.approx(0.8)
    assert paper_alpha("ffn", 4096) == pytest.approx(0.2)
    assert paper_alpha("final", 8192) == pytest.approx(0.05)
    assert paper_alpha("attn", 576) == pytest.approx(0.8)  # below 7B width: the 7B value
    assert 0.6 < paper_alpha("attn", 4500) < 0.8
    report = dytune.convert(tiny_model("llama"), alpha_init="paper")
    assert [round(layer.alpha, 3) for layer in report.converted] == [0.8, 0.2, 0.8, 0.2, 0.2]


def test_calibrated_alpha_beats_constant_and_reports_fit():
    tok = tiny_tokenizer()
    reference = tiny_model("llama")(IDS).logits
    errors = {}
    for init in ["constant:0.5", "calibrated"]:
        model = tiny_model("llama")
        report = dytune.convert(model, alpha_init=init, tokenizer=tok, progress=False)
        errors[init] = (model(IDS).logits - reference).pow(2).mean().item()
        if init == "calibrated":
            assert report.calibration_tokens > 100
            assert all(0 <= layer.fit_error < 0.5 for layer in report.converted)
            assert "| model.layers.0.input_layernorm | attn | rmsnorm | yes |" in report.table()
    assert errors["calibrated"] < errors["constant:0.5"] / 3


@pytest.mark.parametrize("method", ["parallel", "sequential"])
def test_calibration_methods_and_per_channel(method):
    model = tiny_model("gpt2")
    report = dytune.convert(model, tokenizer=tiny_tokenizer(), calibration_method=method, per_channel=True,
                            progress=False)
    alpha = model.transformer.h[0].ln_1.alpha
    assert alpha.shape == (64,) and alpha.std() > 0
    assert report.converted[0].alpha_min < report.converted[0].alpha_max


def test_revert_restores_original_logits_and_classes():
    model = tiny_model("gemma2")
    reference = model(IDS).logits
    cls = type(model)
    dytune.convert(model, alpha_init="paper")
    assert not torch.allclose(model(IDS).logits, reference)
    dytune.revert(model)
    assert type(model) is cls and not hasattr(model.config, "dyt")
    torch.testing.assert_close(model(IDS).logits, reference)
    assert not dytune.dyt_modules(model)


def test_drop_affine_ablation_sets_identity():
    model = tiny_model("gpt2")
    dytune.convert(model, alpha_init=0.5, keep_affine=False)
    ln = model.transformer.h[0].ln_1
    assert torch.equal(ln.weight, torch.ones(64)) and torch.equal(ln.bias, torch.zeros(64))


def test_errors_are_clear():
    with pytest.raises(DytuneError, match="unknown norm kind"):
        parse_kinds("attn,banana")
    with pytest.raises(DytuneError, match="unknown alpha init"):
        dytune.convert(tiny_model("llama"), alpha_init="magic")
    with pytest.raises(DytuneError, match="needs a tokenizer"):
        dytune.convert(tiny_model("llama"))
    model = tiny_model("llama")
    dytune.convert(model, alpha_init=1.0)
    with pytest.raises(DytuneError, match="already DyT-converted"):
        dytune.convert(model, alpha_init=1.0)
    no_norms = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(DytuneError, match="no LayerNorm/RMSNorm"):
        find_norms(no_norms)


def test_unknown_norm_class_is_listed():
    class WeirdNorm(torch.nn.Module):  # a "norm" with arithmetic dytune does not know
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(64))

        def forward(self, x):
            return x / (x.abs().max(-1, keepdim=True).values + 1e-6) * self.weight

    model = tiny_model("llama")
    model.model.norm = WeirdNorm()
    with pytest.raises(DytuneError, match=r"model\.norm \(WeirdNorm\)"):
        dytune.convert(model, alpha_init=1.0)
