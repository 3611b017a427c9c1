"""Each mode trains exactly its tensors (every other one bit-identical), alpha moves, groups hold the right tensors,
and the LoRA+DyT adapter round-trips the trained DyT values."""

from __future__ import annotations

import pytest
import torch

import dytune
from dytune.dyt import DyT
from dytune.errors import DytuneError
from dytune.testing import tiny_model, tiny_tokenizer
from dytune.train.losses import causal_ce_sum
from dytune.train.trainable import apply_mode, classify_parameters, param_groups


def _batch(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 300, (4, 16), generator=gen)
    labels = ids.clone()
    labels[:, :5] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _steps(model: torch.nn.Module, steps: int = 3, lr: float = 1e-2) -> None:
    model.train()
    opt = torch.optim.AdamW(param_groups(model, lr, 0.1, alpha_lr_multiplier=5.0, affine_lr_multiplier=2.0))
    for i in range(steps):
        batch = _batch(i)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        nll, n = causal_ce_sum(out.logits, batch["labels"])
        (nll / n).backward()
        opt.step()
        opt.zero_grad()


def _converted(arch: str, norm: str = "dyt") -> torch.nn.Module:
    model = tiny_model(arch)
    if norm == "dyt":
        dytune.convert(model, alpha_init="constant:0.7", progress=False)
    return model


def _original_name(peft_name: str) -> str:
    """PEFT's name of a frozen tensor -> the name it had before wrapping."""
    return peft_name.replace(".base_layer", "").replace(".original_module", "")


def _expected(mode: str, name: str, norm_names: list[str]) -> bool:
    in_norm = any(name.startswith(n + ".") for n in norm_names)
    return {"full": True, "dyt-only": in_norm, "lora": False, "lora+dyt": False}[mode]


CASES = [("llama", "full", "dyt"), ("llama", "lora", "dyt"), ("llama", "lora+dyt", "dyt"),
         ("llama", "dyt-only", "dyt"), ("gpt2", "lora+dyt", "dyt"), ("gpt_neox", "lora+dyt", "dyt"),
         ("gpt2", "dyt-only", "layernorm"), ("llama", "lora+dyt", "layernorm")]


@pytest.mark.parametrize("arch,mode,norm", CASES)
def test_mode_changes_exactly_its_parameters(arch: str, mode: str, norm: str) -> None:
    model = _converted(arch, norm)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = apply_mode(model, mode, norm)
    trained = result.model
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    _steps(trained)
    base = trained.get_base_model() if hasattr(trained, "get_base_model") else trained
    changed_trainable = 0
    for name, param in base.named_parameters():
        if ".lora_" in name or ".modules_to_save." in name:  # adapter tensors: new, and all must train
            assert any(t.endswith(name) for t in trainable), f"{name} is an adapter tensor but frozen"
            if ".lora_" in name or name.endswith("alpha"):
                assert ".lora_" in name or norm == "dyt"
            original = before.get(name.replace(".modules_to_save.default", ""))
            if original is not None:
                assert not torch.equal(param.detach(), original), f"{name} trainable but unchanged"
            changed_trainable += 1
            continue
        original = before[_original_name(name)]
        if _expected(mode, _original_name(name), result.norm_names):
            assert not torch.equal(param.detach(), original), f"{mode}: {name} should have trained"
            changed_trainable += 1
        else:
            assert torch.equal(param.detach(), original), f"{mode}: {name} changed but must stay frozen"
    assert changed_trainable == len(trainable)
    if norm == "dyt" and mode != "lora":  # alpha really moves
        from dytune.train.trainer import alpha_values

        alphas = alpha_values(trained, result.norm_names)
        assert len(alphas) == len(result.norm_names)
        assert all(abs(a - 0.7) > 1e-4 for a in alphas.values()), alphas


@pytest.mark.parametrize("mode", ["full", "lora+dyt", "dyt-only"])
def test_optimizer_groups_hold_exactly_the_intended_tensors(mode: str) -> None:
    model = _converted("gpt2")
    result = apply_mode(model, mode, "dyt")
    groups = {g["name"]: g for g in param_groups(result.model, 1e-3, 0.1, alpha_lr_multiplier=10.0,
                                                 affine_lr_multiplier=3.0)}
    named = {id(p): n for n, p in result.model.named_parameters()}
    members = {k: {named[id(p)] for p in g["params"]} for k, g in groups.items()}
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert set().union(*members.values()) == trainable  # every trainable tensor in exactly one group
    assert sum(len(m) for m in members.values()) == len(trainable)
    active = [n for n, m in result.model.named_modules() if isinstance(m, DyT) and ".original_module" not in n]
    assert members["alpha"] == {f"{n}.alpha" for n in active}
    assert members["affine"] == {f"{n}.{p}" for n in active for p in ("weight", "bias")}
    assert groups["alpha"]["lr"] == pytest.approx(1e-2) and groups["alpha"]["weight_decay"] == 0.0
    assert groups["affine"]["lr"] == pytest.approx(3e-3) and groups["affine"]["weight_decay"] == 0.0
    if mode == "dyt-only":
        assert set(groups) == {"alpha", "affine"}
    else:
        assert groups["decay"]["weight_decay"] == 0.1
        assert all(result.model.get_parameter(n).dim() >= 2 for n in members["decay"])
        assert all(result.model.get_parameter(n).dim() < 2 for n in members.get("no_decay", ()))
    assert set(classify_parameters(result.model)) == trainable


def test_lora_dyt_adapter_round_trips_trained_alpha(tmp_path) -> None:
    from peft import AutoPeftModelForCausalLM

    from dytune.train.outputs import save_adapter
    from dytune.train.trainer import active_norm

    model = _converted("llama")
    dytune.save(model, tmp_path / "base", tiny_tokenizer())
    result = apply_mode(model, "lora+dyt", "dyt")
    _steps(result.model, steps=4)
    trained = {n: active_norm(result.model, n).alpha.detach().clone() for n in result.norm_names}
    assert all(not torch.allclose(a, torch.tensor([0.7])) for a in trained.values())
    save_adapter(result.model, tmp_path / "adapter", tmp_path / "base")
    reloaded = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "adapter"))
    for name, alpha in trained.items():
        assert torch.equal(active_norm(reloaded, name).alpha.detach(), alpha), name  # exactly
    batch = _batch(9)
    result.model.eval()
    with torch.no_grad():
        want = result.model(input_ids=batch["input_ids"]).logits
        got = reloaded.eval()(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(got, want)


def test_hand_unfrozen_norms_are_missing_from_the_adapter(tmp_path) -> None:
    """Why lora+dyt uses modules_to_save: the original study's way (unfreeze after get_peft_model) trains alpha
    but does not save it."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    model = _converted("llama")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    for name, param in peft_model.named_parameters():
        if name.endswith(".alpha"):
            param.requires_grad_(True)
    peft_model.save_pretrained(tmp_path / "a")
    keys = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert not any("alpha" in k for k in keys)


def test_lora_target_that_matches_nothing_is_an_error() -> None:
    model = _converted("gpt2")
    with pytest.raises(DytuneError, match="q_proj.*c_attn"):
        apply_mode(model, "lora", "dyt", lora_targets=["q_proj", "c_attn"])


def test_unknown_architecture_needs_explicit_targets() -> None:
    from dytune.train.trainable import default_targets

    model = tiny_model("llama")
    model.config.model_type = "mystery"
    with pytest.raises(DytuneError, match="lora_target_modules"):
        default_targets(model)


def test_relative_alpha_learning_rates() -> None:
    model = tiny_model("llama")
    dytune.convert(model, alpha_init="constant:0.5", progress=False)
    with torch.no_grad():
        model.model.norm.alpha.fill_(8.0)
    result = apply_mode(model, "dyt-only", "dyt")
    groups = param_groups(result.model, 1e-3, 0.0, alpha_lr_multiplier=2.0, alpha_lr_relative=True)
    alpha_groups = [g for g in groups if g["name"].startswith("alpha.")]
    assert len(alpha_groups) == 5 and all(len(g["params"]) == 1 for g in alpha_groups)
    lrs = {float(g["params"][0].mean()): g["lr"] for g in alpha_groups}
    assert lrs[8.0] == pytest.approx(16e-3) and lrs[0.5] == pytest.approx(1e-3)


@pytest.mark.parametrize("arch,tied,before", [
    ("llama", False, {"model.embed_tokens.weight"}),
    ("llama", True, {"model.embed_tokens.weight"}),  # the tied LM head is that tensor: frozen with it
    ("gpt2", False, {"transformer.wte.weight", "transformer.wpe.weight"}),  # position embeddings run first too
])
def test_frozen_depth_freezes_the_first_blocks_and_what_runs_before_them(arch, tied, before) -> None:
    from dytune.train.trainable import freeze_early_layers

    model = tiny_model(arch, num_hidden_layers=4, tie_word_embeddings=tied) if arch == "llama" else \
        tiny_model(arch, n_layer=4)
    dytune.convert(model, alpha_init="constant:0.5", progress=False)
    blocks = "model.layers" if arch == "llama" else "transformer.h"
    frozen = set(freeze_early_layers(model, 0.5))  # floor(0.5 x 4) = blocks 0 and 1
    in_blocks = {n for n in frozen if n.startswith(blocks + ".")}
    assert {n.split(".")[2] for n in in_blocks} == {"0", "1"}
    assert frozen - in_blocks == before
    model.train()
    batch = _batch()
    causal_ce_sum(model(input_ids=batch["input_ids"]).logits, batch["labels"])[0].backward()
    for name, param in model.named_parameters():
        assert (param.grad is None) == (name in frozen), name  # every other tensor still gets its gradient
    assert freeze_early_layers(tiny_model(arch), 0.4) == []  # floor(0.4 x 2) = 0 blocks: nothing frozen


def test_frozen_depth_run_keeps_the_early_layers_bit_identical(quick, tiny_dir, tmp_path) -> None:
    from dytune.train import train

    train(quick(mode="full", frozen_depth=0.5, output_dir=str(tmp_path / "f")))
    final, original = dytune.load(str(tmp_path / "f" / "final")), dytune.load(str(tiny_dir))
    for name, param in original.named_parameters():
        moved = not torch.equal(final.get_parameter(name), param)
        if name.startswith(("model.layers.0.", "model.embed_tokens.")):
            assert not moved, name
        elif name.startswith("model.layers.1.") and name.endswith("proj.weight"):
            assert moved, name
