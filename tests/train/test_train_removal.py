"""Gradual norm removal: schedules, gates that reach exactly zero, and the mixture they compute."""

import copy

import pytest
import torch

import dytune
from dytune.errors import DytuneError
from dytune.testing import tiny_model
from dytune.train.removal import NormGates, RemovalSchedule
from dytune.train.teacher import OriginalNorms

NAMES = ("l0.attn", "l0.ffn", "l1.attn", "l1.ffn", "final")
KINDS = ("attn", "ffn", "attn", "ffn", "final")


def test_depth_order_splits_in_forward_order_and_ramps_each_group():
    s = RemovalSchedule(NAMES, KINDS, order="depth", groups=2, ramp_steps=4, hold_steps=2)
    assert s.site_groups() == [["l0.attn", "l0.ffn", "l1.attn"], ["l1.ffn", "final"]]
    assert s.total_steps == 12
    assert [s.gate(0, t) for t in range(7)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0]
    assert [s.gate(1, t) for t in (0, 5, 6, 7, 9, 10, 50)] == [1.0, 1.0, 1.0, 0.75, 0.25, 0.0, 0.0]
    assert s.gates(7) == {"l1.ffn": 0.75, "final": 0.75}  # group 0 at 0: no hook
    assert s.gates(12) == {}


def test_fakeln_order_removes_mlp_norms_then_attention_then_final():
    s = RemovalSchedule(NAMES, KINDS, order="fakeln", groups=3, ramp_steps=1)
    assert s.site_groups() == [["l0.ffn", "l1.ffn"], ["l0.attn", "l1.attn"], ["final"]]
    # more groups than kinds split each kind by depth
    s = RemovalSchedule(NAMES, KINDS, order="fakeln", groups=6, ramp_steps=1)
    assert s.site_groups() == [["l0.ffn"], ["l1.ffn"], ["l0.attn"], ["l1.attn"], ["final"]]


def test_cosine_ramp_and_default_schedule():
    s = RemovalSchedule(NAMES, KINDS, ramp_steps=4, shape="cosine")
    assert s.gate(0, 0) == 1.0 and s.gate(0, 2) == pytest.approx(0.5) and s.gate(0, 4) == 0.0
    assert 0.5 < s.gate(0, 1) < 1.0
    default = RemovalSchedule(NAMES, KINDS)
    assert not default.active and default.gates(0) == {} and default.total_steps == 0


@pytest.mark.parametrize("bad", [dict(order="random"), dict(groups=0), dict(ramp_steps=-1), dict(shape="step")])
def test_bad_schedules_fail_clearly(bad):
    with pytest.raises(DytuneError, match="removal_"):
        RemovalSchedule(NAMES, KINDS, **bad)


def test_gates_mix_norm_and_dyt_and_vanish_at_zero():
    original = tiny_model("llama").eval()
    model = copy.deepcopy(original)
    dytune.convert(model, alpha_init="constant:0.5", progress=False)
    originals = OriginalNorms.from_converted(model)
    ids = torch.tensor([[1, 5, 9, 30, 2, 7, 11, 40]])
    gates = NormGates(originals.originals)
    with torch.no_grad():
        dyt_logits = model(input_ids=ids).logits
        gates.set(model, dict.fromkeys(originals.names, 1.0))
        torch.testing.assert_close(model(input_ids=ids).logits, original(input_ids=ids).logits)
        # one site at g = 0.25: its output is exactly 0.25 * norm + 0.75 * DyT
        site = originals.names[0]
        gates.set(model, {site: 0.25})
        x = torch.randn(2, 3, 64)
        module = model.get_submodule(site)
        want = 0.25 * originals.originals[site](x) + 0.75 * module.forward(x)
        torch.testing.assert_close(module(x), want)
        gates.set(model, {})
        assert not module._forward_hooks
        torch.testing.assert_close(model(input_ids=ids).logits, dyt_logits, rtol=0, atol=0)


TEXTS = [f"The quick brown fox number {i} jumps over the lazy dog, again and again." for i in range(24)]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gates_from_original_undo_a_linear_refit_at_one(arch, tmp_path):
    """A linear refit changes the consumers, the output projections and the LM head: at g = 1 the gates
    must still give the original model (maps into the refitted consumers, output-projection deltas); at 0,
    the saved DyT model."""
    from dytune.testing import tiny_tokenizer

    tiny_model(arch).save_pretrained(tmp_path / "original")
    original = dytune.load_model(str(tmp_path / "original")).eval()
    student = dytune.load_model(str(tmp_path / "original"))
    dytune.convert(student, tokenizer=tiny_tokenizer(), calibration=TEXTS, calibration_refit="linear",
                   progress=False)
    dytune.save(student, tmp_path / "dyt", tiny_tokenizer())
    student = dytune.load(tmp_path / "dyt").eval()
    names = [name for name, _ in dytune.dyt_modules(student)]
    gates = NormGates.from_original(student, original, names)
    assert set(gates.rerouted) == set(names)  # every site's consumers were refitted (the final norm: the LM head)
    # each sub-layer's output projection too (nothing after the final norm)
    assert sum(not reads for site in names for _, _, reads in gates.rerouted[site]) == len(names) - 1
    ids = torch.tensor([[1, 5, 9, 30, 2, 7, 11, 40]])
    with torch.no_grad():
        dyt_logits = student(input_ids=ids).logits
        original_logits = original(input_ids=ids).logits
        assert (dyt_logits - original_logits).abs().max() > 1e-2  # the test can fail
        gates.set(student, dict.fromkeys(names, 1.0))
        torch.testing.assert_close(student(input_ids=ids).logits, original_logits, rtol=1e-5, atol=1e-5)
        gates.set(student, dict.fromkeys(names, 0.5))
        half = student(input_ids=ids).logits
        assert (half - original_logits).abs().max() > 1e-3 and (half - dyt_logits).abs().max() > 1e-3
        gates.set(student, {})
        torch.testing.assert_close(student(input_ids=ids).logits, dyt_logits, rtol=0, atol=0)


def test_gates_from_original_name_a_missing_module(tmp_path):
    student = tiny_model("llama")
    dytune.convert(student, alpha_init="constant:0.5", progress=False)
    with pytest.raises(DytuneError, match="the original model has no module model.layers.0.input_layernorm"):
        NormGates.from_original(student, tiny_model("gpt2"), ["model.layers.0.input_layernorm"])
