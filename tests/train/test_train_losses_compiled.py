"""The compiled CE / KL give the eager values and gradients, and fall back to eager when compiling fails."""

from __future__ import annotations

import pytest
import torch

from dytune.train.losses import CompiledLoss, causal_ce_sum, kl_teacher_student


def _inputs(t: int):
    g = torch.Generator().manual_seed(t)
    student = torch.randn(2, t, 50, generator=g, requires_grad=True)
    teacher = torch.randn(2, t, 50, generator=g)
    labels = torch.randint(0, 50, (2, t), generator=g)
    labels[0, :3] = -100
    mask = torch.ones(2, t - 1, dtype=torch.bool)
    mask[1, -2:] = False
    return student, teacher, labels, mask


def _loss_and_grad(ce, kl, t: int):  # noqa: ANN001, ANN202
    student, teacher, labels, mask = _inputs(t)
    nll, n = ce(student, labels)
    loss = nll / n + kl(student, teacher, mask, 2.0)
    loss.backward()
    return loss.detach(), student.grad, int(n)


@pytest.mark.parametrize("t", [7, 12])  # two lengths: one dynamic-shape graph serves both
def test_compiled_losses_match_eager(t):
    ce, kl = CompiledLoss(causal_ce_sum), CompiledLoss(kl_teacher_student)
    eager = _loss_and_grad(causal_ce_sum, kl_teacher_student, t)
    compiled = _loss_and_grad(ce, kl, t)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-7)
    assert compiled[2] == eager[2]
    assert not ce._failed and not kl._failed


def test_a_failing_compile_warns_once_and_runs_eagerly(monkeypatch):
    def broken(fn, **kwargs):  # noqa: ANN001, ANN202
        def run(*args, **kw):  # noqa: ANN002, ANN003, ANN202
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    ce = CompiledLoss(causal_ce_sum)
    student, _, labels, _ = _inputs(6)
    with pytest.warns(UserWarning, match="compiling causal_ce_sum failed .*no C\\+\\+ compiler"):
        nll, n = ce(student, labels)
    torch.testing.assert_close(nll, causal_ce_sum(student, labels)[0])
    ce(student, labels)  # no second warning: eager from now on
    assert ce._failed
