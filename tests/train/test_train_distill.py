"""The teacher is the original model (no second copy in the adapter modes), distillation loss falls,
progressive conversion and block-wise distillation do what they say."""

from __future__ import annotations

import copy

import pytest
import torch

import dytune
from dytune.testing import tiny_model, tiny_tokenizer
from dytune.train.losses import causal_ce_sum, hidden_match, kl_teacher_student
from dytune.train.teacher import FrozenTeacher, OriginalNorms
from dytune.train.trainable import apply_mode, param_groups


def _ids(seed: int = 0, batch: int = 4, length: int = 16) -> torch.Tensor:
    return torch.randint(3, 300, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["lora", "lora+dyt", "dyt-only"])
def test_teacher_view_is_the_original_model(mode: str) -> None:
    original = tiny_model("llama").eval()
    model = copy.deepcopy(original)
    dytune.convert(model, alpha_init="constant:0.5", progress=False)
    originals = OriginalNorms.from_converted(model)
    result = apply_mode(model, mode, "dyt")
    result.model.eval()  # no LoRA dropout: student outputs must be comparable before and after
    ids = _ids()
    with torch.no_grad():
        want = original(input_ids=ids).logits
        # perturb what trains, so a teacher that leaked the student would differ
        for name, param in result.model.named_parameters():
            if param.requires_grad:
                param.add_(0.05)
        student = result.model(input_ids=ids).logits
        with originals.teacher(result.model) as teacher:
            got = teacher(input_ids=ids).logits
        after = result.model(input_ids=ids).logits
    torch.testing.assert_close(got, want)
    assert not torch.allclose(student, want, atol=1e-3)
    torch.testing.assert_close(after, student)  # hooks are gone afterwards


def test_layernorm_twin_teacher_uses_frozen_norm_copies() -> None:
    model = tiny_model("gpt2").eval()
    ids = _ids(1)
    with torch.no_grad():
        want = model(input_ids=ids).logits
    from dytune.train.trainable import norm_module_names

    originals = OriginalNorms.snapshot(model, norm_module_names(model, "layernorm"))
    result = apply_mode(model, "dyt-only", "layernorm")
    with torch.no_grad():
        for param in result.model.parameters():
            if param.requires_grad:
                param.mul_(1.5)
        with originals.teacher(result.model) as teacher:
            got = teacher(input_ids=ids).logits
    torch.testing.assert_close(got, want)


def test_kl_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    logits = torch.randn(2, 5, 11)
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert float(kl_teacher_student(logits, logits, mask, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_teacher_student(logits + torch.randn(2, 5, 11), logits, mask)) > 0


def test_hidden_match_weighs_every_token_once_and_skips_both_ends() -> None:
    torch.manual_seed(0)
    teacher = [torch.randn(1, 4, 8) for _ in range(4)]  # embedding output, two blocks, the final norm's output
    for h in teacher[1:3]:
        h[:, 0] *= 100  # the attention sink's massive activation
    mask = torch.ones(1, 4)
    student = [h.clone() for h in teacher]
    assert float(hidden_match(tuple(student), tuple(teacher), mask)) == pytest.approx(0.0, abs=1e-7)
    student[0] = student[0] + 1.0  # the embedding output and the post-norm state are not compared
    student[3] = student[3] * 3.0
    assert float(hidden_match(tuple(student), tuple(teacher), mask)) == pytest.approx(0.0, abs=1e-7)
    student[1] = teacher[1].clone()
    student[1][:, 2] *= 2.0  # one ordinary token off by its own norm: 1/4 of block 1's tokens, half the blocks
    assert float(hidden_match(tuple(student), tuple(teacher), mask)) == pytest.approx(1.0 / 4 / 2, rel=1e-5)
    with pytest.raises(ValueError, match="two blocks"):
        hidden_match(tuple(student[:2]), tuple(teacher[:2]), mask)


@pytest.mark.parametrize("mode", ["lora+dyt", "full"])
def test_distillation_loss_falls(mode: str) -> None:
    torch.manual_seed(0)
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # peaked output distributions: a gap worth closing
    frozen = copy.deepcopy(model) if mode == "full" else None
    dytune.convert(model, alpha_init="constant:0.5", progress=False)  # far from the norms: a real gap
    teacher = FrozenTeacher(frozen) if frozen is not None else OriginalNorms.from_converted(model)
    result = apply_mode(model, mode, "dyt")
    opt = torch.optim.AdamW(param_groups(result.model, 1e-2, 0.0, alpha_lr_multiplier=3.0))
    kls = []
    ids = _ids(2, batch=8)
    for _ in range(30):
        result.model.train()
        out = result.model(input_ids=ids)
        with torch.no_grad(), teacher.teacher(result.model) as t:
            t_logits = t(input_ids=ids).logits
        kl = kl_teacher_student(out.logits, t_logits, torch.ones(8, 15, dtype=torch.bool))
        kl.backward()
        opt.step()
        opt.zero_grad()
        kls.append(float(kl))
    assert kls[-1] < 0.75 * kls[0], kls


def test_local_distillation_fits_blocks() -> None:
    from dytune.train.local import local_distill

    model = tiny_model("llama")
    dytune.convert(model, alpha_init="constant:40", progress=False)  # tiny random models: |x| ~ 0.02
    originals = OriginalNorms.from_converted(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if ".alpha" not in n
              and not any(n.startswith(s + ".") for s in originals.names)}
    batches = [{"input_ids": _ids(i), "attention_mask": torch.ones(4, 16, dtype=torch.long)} for i in range(3)]
    summary = local_distill(model, originals, batches, steps=30, lr=3e-2, params="dyt", progress=False)
    assert summary["nmse_last"] < 0.5 * summary["nmse_first"], summary
    for name, param in model.named_parameters():  # only DyT parameters moved
        if name in frozen:
            assert torch.equal(param.detach(), frozen[name]), name
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_tiny_tokenizer_eos_list_includes_end_of_turn() -> None:
    from dytune.train.outputs import end_of_turn_ids

    tok = tiny_tokenizer(chat_template=True)
    assert tok.convert_tokens_to_ids("<|im_end|>") in end_of_turn_ids(tok)
    base = tiny_tokenizer(chat_template=False)
    assert end_of_turn_ids(base) == [base.eos_token_id]
