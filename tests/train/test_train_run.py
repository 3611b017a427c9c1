"""End-to-end runs through Trainer on a tiny model: run directory, metrics, final model, adapter, NaN guard, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import dytune
from dytune.errors import DytuneError
from dytune.testing import tiny_model
from dytune.train import parse_config, train
from dytune.train.callbacks import read_metrics


def test_lora_dyt_run_with_distillation(quick, tmp_path) -> None:
    cfg = quick(mode="lora+dyt", distill=True, max_grad_norm=1e-5, alpha_lr_multiplier=20.0)
    summary = train(cfg)
    run = Path(cfg.output_dir)
    assert summary["status"] == "completed" and summary["global_step"] == 4
    for name in ("config.yaml", "data_report.json", "metrics.jsonl", "summary.json", "final", "adapter", "base",
                 "checkpoint-4"):
        assert (run / name).exists(), name
    assert not (run / "checkpoint-2").exists() or (run / "checkpoint-2" / "trainer_state.json").exists()
    rows = read_metrics(run / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    for key in ("grad_norm", "learning_rate", "tokens_per_second", "ce", "kl", "tokens"):
        assert all(key in r for r in train_rows), key
    assert all(r["grad_norm"] > 1e-5 for r in train_rows)  # logged before clipping to 1e-5
    alpha_keys = [k for k in train_rows[0] if k.startswith("alpha/")]
    assert len(alpha_keys) == 5
    assert train_rows[0][alpha_keys[0]] != pytest.approx(0.5, abs=1e-6)  # moved already at step 1
    assert [r["step"] for r in eval_rows][:2] == [2, 4] and all("eval_ppl" in r for r in eval_rows)
    # final/: LoRA merged, DyT with the trained alpha, EOS list from the chat template
    final = dytune.load(str(run / "final"))
    assert type(final).__name__.startswith("DyT")
    for name, value in summary["alpha"].items():
        assert float(final.get_submodule(name).alpha.mean()) == pytest.approx(value, abs=1e-6)
    generation = json.loads((run / "final" / "generation_config.json").read_text())
    assert 2 in (generation["eos_token_id"] if isinstance(generation["eos_token_id"], list) else [generation["eos_token_id"]])
    assert (run / "final" / "README.md").is_file()
    # adapter/: its base is the saved DyT model, and it reproduces the trained alpha
    adapter_cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert Path(adapter_cfg["base_model_name_or_path"]) == (run / "base").resolve()
    assert json.loads((run / "base" / "config.json").read_text())["model_type"] == "dytune"
    from peft import AutoPeftModelForCausalLM

    from dytune.train.trainer import active_norm

    reloaded = AutoPeftModelForCausalLM.from_pretrained(str(run / "adapter"))
    for name, value in summary["alpha"].items():
        assert float(active_norm(reloaded, name).alpha.mean()) == pytest.approx(value, abs=1e-6)
    # config.yaml is a valid config again
    again = parse_config(run / "config.yaml", [])
    assert again.mode == "lora+dyt" and again.distill and again.data["source"] == cfg.data["source"]


def test_full_mode_distillation_and_layernorm_twin(quick, tmp_path) -> None:
    dyt = train(quick(mode="full", distill=True, distill_hidden_weight=0.1, output_dir=str(tmp_path / "dyt"),
                      eval_strategy="no"))
    twin = train(quick(mode="full", norm="layernorm", distill=True, output_dir=str(tmp_path / "ln"),
                       eval_strategy="no"))
    assert dyt["train_tokens"] == twin["train_tokens"]  # same tokens, same order: a fair comparison
    rows = [r for r in read_metrics(tmp_path / "dyt" / "metrics.jsonl") if "loss" in r]
    assert all("hidden_mse" in r for r in rows)
    plain = dytune.load(str(tmp_path / "ln" / "final"))
    assert type(plain).__name__ == "LlamaForCausalLM" and not twin["alpha"]
    card = (tmp_path / "ln" / "final" / "README.md").read_text()  # the twin says what it is
    assert "(LayerNorm baseline)" in card and "Dynamic Tanh layers" in card and "Converted norm layers" not in card
    assert f"{twin['train_tokens']} tokens, {twin['global_step']} steps" in card
    dyt_card = (tmp_path / "dyt" / "final" / "README.md").read_text()
    assert "replaced by Dynamic Tanh" in dyt_card and "Converted norm layers: 5" in dyt_card


def test_max_train_tokens_stops_at_the_end_of_the_step_that_reaches_it(quick, tmp_path) -> None:
    summary = train(quick(max_steps=50, max_train_tokens=400, output_dir=str(tmp_path / "t"), eval_strategy="no"))
    seen = [r["num_input_tokens_seen"] for r in read_metrics(tmp_path / "t" / "metrics.jsonl") if "loss" in r]
    assert len(seen) == summary["global_step"] > 1 and summary["global_step"] < 50
    assert seen[-2] < 400 <= seen[-1] == summary["train_tokens"]  # stopped after the first step that reached it


def test_read_metrics_and_truncate_survive_a_torn_last_line(tmp_path) -> None:
    from dytune.train.callbacks import MetricsJsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')  # killed mid-write
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    MetricsJsonl.truncate_after(path, 1)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n'


def test_dyt_only_trains_nothing_else(quick, tiny_dir, tmp_path) -> None:
    summary = train(quick(mode="dyt-only", output_dir=str(tmp_path / "d")))
    assert set(summary["trainable_parameters"]) == {"alpha", "affine"}
    final = dytune.load(str(tmp_path / "d" / "final"))
    original = dytune.load(str(tiny_dir))
    for name, param in original.named_parameters():
        if "norm" not in name:
            assert torch.equal(final.get_parameter(name), param), name


def test_lr_multipliers_freeze_and_scale_by_parameter_name(quick, tiny_dir, tmp_path) -> None:
    """`lr_multipliers`: multiplier 0 keeps layer 0 bit-identical through a full-mode run; layer 1 still trains."""
    summary = train(quick(mode="full", lr_multipliers="model.layers.0.*=0,*.mlp.*=0.5",
                          output_dir=str(tmp_path / "m")))
    assert summary["global_step"] == 4
    final = dytune.load(str(tmp_path / "m" / "final"))
    # frozen before the summary counts what trains: layer 0 is not in it
    assert sum(summary["trainable_parameters"].values()) == sum(
        p.numel() for n, p in final.named_parameters() if not n.startswith("model.layers.0."))
    original = dytune.load(str(tiny_dir))
    for name, param in original.named_parameters():
        moved = not torch.equal(final.get_parameter(name), param)
        if name.startswith("model.layers.0."):
            assert not moved, name
        elif name.startswith("model.layers.1.") and name.endswith("proj.weight"):
            assert moved, name


def test_lr_multiplier_groups() -> None:
    from dytune.train.trainable import param_groups

    model = tiny_model("llama")
    dytune.convert(model, alpha_init="constant:0.5", progress=False)
    groups = param_groups(model, 1e-3, 0.1, alpha_lr_multiplier=10.0,
                          lr_multipliers={"model.layers.0.*": 0.1, "*.mlp.*": 0.0})
    rates = {g["name"]: (g["lr"], g["weight_decay"], len(g["params"])) for g in groups}
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert rates["decay*0.1"][:2] == (pytest.approx(1e-4), 0.1)  # layer 0's attention (its mlp matched first)
    assert rates["alpha*0.1"][:2] == (pytest.approx(1e-3), 0.0)  # layer 0's two alphas: 10x, then 0.1x
    assert rates["alpha*0.1"][2] == 2 and rates["alpha"][2] == 3  # final norm + layer 1's two
    assert not any(".mlp." in n for members in by_group.values() for n in members if "layers.1." in n)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(".mlp." in n for n in frozen)  # multiplier 0: no gradient is computed for them
    assert all(n.startswith("model.layers.0.") for n in by_group["decay*0.1"])
    with pytest.raises(DytuneError, match=r"'model.blocks.\*' match no trainable parameter"):
        param_groups(model, 1e-3, 0.0, lr_multipliers={"model.blocks.*": 0.5})
    from dytune.train.trainable import freeze_zero_multipliers

    with pytest.raises(DytuneError, match=r"'model.blocks.\*' match no trainable parameter"):
        freeze_zero_multipliers(model, {"model.blocks.*": 0.0})  # what a run checks a 0 glob with


@pytest.mark.parametrize("value,message", [("layers.0", "GLOB=MULT"), ("a=x", "not a number"),
                                           ("a=-1", "negative")])
def test_lr_multipliers_bad_values(value: str, message: str) -> None:
    from dytune.train import TrainConfig

    with pytest.raises(DytuneError, match=message):
        TrainConfig(output_dir="unused", lr_multipliers=value)


def test_lr_decay_fraction_places_the_decay_at_the_end_of_the_run(quick, tmp_path) -> None:
    """warmup_stable_decay with lr_decay_fraction 0.5 over 8 steps: 2 warmup steps, stable, the last 4 decaying to 0."""
    from dytune.train.callbacks import read_metrics

    train(quick(mode="full", max_steps=8, learning_rate=1e-3, warmup_steps=2, lr_scheduler_type="warmup_stable_decay",
                lr_decay_fraction=0.5, lr_scheduler_kwargs={"decay_type": "linear"}, eval_strategy="no",
                save_strategy="no", output_dir=str(tmp_path / "wsd")))
    rates = [r["learning_rate"] for r in read_metrics(tmp_path / "wsd" / "metrics.jsonl") if "learning_rate" in r]
    assert rates == pytest.approx([0.0, 5e-4, 1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4], abs=1e-9)
    saved = yaml.safe_load((tmp_path / "wsd" / "config.yaml").read_text())
    assert saved["lr_scheduler_kwargs"] == {"decay_type": "linear"}  # the run's file says what the user said


def test_nan_stops_with_a_clear_message(quick, tiny_dir, tmp_path) -> None:
    model = dytune.load(str(tiny_dir))
    dytune.convert(model, alpha_init="constant:0.5", progress=False)
    with torch.no_grad():
        model.model.layers[1].input_layernorm.alpha.fill_(float("inf"))
    bad = tmp_path / "bad"
    dytune.save(model, bad, dytune.load_tokenizer(str(tiny_dir)))
    with pytest.raises(DytuneError, match=r"non-finite .* step 1.*alpha in model\.layers\.1\.input_layernorm"):
        train(quick(model=str(bad), mode="dyt-only", output_dir=str(tmp_path / "stop")))
    assert json.loads((tmp_path / "stop" / "summary.json").read_text())["status"].startswith("stopped")
    summary = train(quick(model=str(bad), mode="dyt-only", nan_policy="skip", max_steps=2, eval_strategy="no",
                          output_dir=str(tmp_path / "skip")))
    assert summary["skipped_steps"] == 2


def test_existing_run_needs_resume_or_overwrite(quick, tmp_path) -> None:
    cfg = quick(mode="dyt-only", max_steps=1, eval_strategy="no", output_dir=str(tmp_path / "r"))
    train(cfg)
    with pytest.raises(DytuneError, match="--resume"):
        train(quick(mode="dyt-only", max_steps=1, eval_strategy="no", output_dir=str(tmp_path / "r")))


def test_cli_yaml_and_flags(tmp_path, tiny_dir, chat_data, capsys) -> None:
    from dytune.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_dir), "data": {"source": str(chat_data), "val_fraction": 0.1,
                                         "cache_dir": str(tmp_path / "cache")},
        "mode": "dyt-only", "max_steps": 5, "report_to": "none", "alpha_init": "constant:0.5",
        "output_dir": str(tmp_path / "cli"), "eval_strategy": "no", "disable_tqdm": True}))
    assert main(["train", str(config), "--max_steps", "2", "--data.max_samples", "20", "--logging_steps", "1"]) == 0
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["global_step"] == 2
    resolved = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())
    assert resolved["data"]["max_samples"] == 20 and resolved["max_steps"] == 2
    assert main(["train", str(config), "--mode", "lorra"]) == 2
    assert "mode must be one of" in capsys.readouterr().err


@pytest.mark.parametrize("bad,message", [
    ({"mode": "qlora"}, "mode must be one of"),
    ({"norm": "rmsnorm"}, "norm must be one of"),
    ({"distill_on": "user"}, "distill_on"),
    ({"fp16": True}, "fp16 needs a CUDA GPU"),
    ({"removal_order": "random"}, "removal_order must be one of all, depth, fakeln"),
    ({"removal_groups": 0}, "removal_groups must be >= 1"),
    ({"norm": "layernorm", "removal_ramp_steps": 3}, "need norm: dyt"),
    ({"norm": "layernorm", "local_distill_steps": 3}, "need norm: dyt"),
    ({"distill_hidden_weight": 1.0}, "needs distill"),
    ({"max_length": 64, "data": {"source": "x", "max_length": 32}}, "disagree"),
    ({"refit_ridge_to": "one"}, "refit_ridge_to must be one of zero, original"),
    ({"refit_ridge": -1.0}, "refit_ridge must be >= 0"),
    ({"lr_decay_fraction": 1.0}, r"lr_decay_fraction must be in \[0, 1\)"),
    ({"lr_decay_fraction": 0.3}, "not of linear"),
    ({"lr_decay_fraction": 0.3, "lr_scheduler_type": "warmup_stable_decay",
      "lr_scheduler_kwargs": {"num_decay_steps": 5}}, "set one"),
    ({"lr_decay_fraction": 0.3, "lr_scheduler_type": "warmup_stable_decay", "max_train_tokens": 1000},
     "token budget"),
])
def test_bad_configs_fail_clearly(bad: dict, message: str) -> None:
    from dytune.train import TrainConfig

    if bad.get("fp16") and torch.cuda.is_available():
        pytest.skip("fp16 is allowed with a GPU")
    with pytest.raises(DytuneError, match=message):
        TrainConfig(output_dir="unused", **bad)


def test_unknown_keys_list_the_valid_ones(tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("modle: x\nlearning_rat: 1\n")
    with pytest.raises(DytuneError) as err:
        parse_config(config, [])
    text = str(err.value)
    assert "learning_rat, modle" in text and "modle -> did you mean mode" in text and "learning_rate" in text
    assert "dytune keys: model" in text and "per_device_train_batch_size" in text
    with pytest.raises(DytuneError, match="unknown setting.*lora_rank"):
        parse_config(None, ["--lora_rank", "8"])


def test_defaults_say_what_they_mean() -> None:
    cfg = parse_config(None, ["--recipe", "none", "--output_dir", "unused"])
    assert cfg.bf16 is False and cfg.fp16 is False and cfg.activation_checkpointing is False
    assert cfg.report_to == ["tensorboard"] and cfg.include_num_input_tokens_seen == "non_padding"
    default = parse_config(None, ["--output_dir", "unused"])  # bf16: auto, resolved in test_train_precision
    assert default.recipe == "recover" and isinstance(default.bf16, bool) and default.fp16 is False


@pytest.mark.parametrize("name", ["smollm2_cpu_lora_dyt.yaml", "fsdp2_llama3b.yaml"])
def test_shipped_configs_parse(name: str) -> None:
    from dytune.train.config import load_yaml, valid_keys

    path = Path(__file__).resolve().parents[2] / "configs" / name
    values = load_yaml(path)
    assert not set(values) - set(valid_keys())
    if name.startswith("smollm2"):
        cfg = parse_config(path, ["--output_dir", "unused"])
        assert cfg.mode == "lora+dyt" and cfg.distill and cfg.data_spec().max_length == 512


def test_block_wise_stage_runs_before_training(quick, tmp_path) -> None:
    summary = train(quick(mode="dyt-only", distill=True, local_distill_steps=2, local_distill_lr=1e-2, max_steps=1,
                          eval_strategy="no", output_dir=str(tmp_path / "b")))
    assert summary["local_distill"]["steps"] == 2 and summary["local_distill"]["tokens"] > 0


def test_gradual_removal(quick, tmp_path) -> None:
    # depth order, 2 groups, ramp 2 + hold 1: group 0's gate 1, .5, 0, 0; group 1's 1, 1, 1, 1, .5, 0
    train(quick(mode="dyt-only", distill=True, removal_order="depth", removal_groups=2,
                removal_ramp_steps=2, removal_hold_steps=1, max_steps=6, eval_strategy="no",
                report_to="tensorboard", output_dir=str(tmp_path / "p")))
    rows = [r for r in read_metrics(tmp_path / "p" / "metrics.jsonl") if "loss" in r]
    # logged after each step; the gate is the one that step trained with (3 of 5 sites in group 0)
    assert [round(r["removal_gate"], 3) for r in rows] == [1.0, 0.7, 0.4, 0.4, 0.2, 0.0]
    late = ["alpha/model.layers.1.post_attention_layernorm", "alpha/model.norm"]  # the second group's sites
    early = "alpha/model.layers.0.input_layernorm"
    start = {k: rows[0][k] for k in late}
    assert rows[0][early] == 0.5 and rows[1][early] != 0.5  # gate 1: no gradient reaches DyT; gate .5: it does
    assert all(rows[3][k] == start[k] for k in late)  # gate 1 until step 4: no gradient reaches them
    assert all(rows[5][k] != start[k] for k in late)
    assert list((tmp_path / "p" / "runs").rglob("events.out.tfevents.*"))  # TensorBoard got the metrics
    # the saved model holds no norm and reloads to the trained student's logits
    final = dytune.load(str(tmp_path / "p" / "final"))
    assert not [m for m in final.modules() if "Norm" in type(m).__name__]
    assert len(dytune.dyt_modules(final)) == 5


def test_removal_schedule_longer_than_training_is_refused(quick, tmp_path) -> None:
    with pytest.raises(DytuneError, match="removal schedule needs 8 steps"):
        train(quick(mode="dyt-only", removal_order="depth", removal_groups=2, removal_ramp_steps=4,
                    max_steps=6, eval_strategy="no", output_dir=str(tmp_path / "long")))


def test_bf16_autocast_trains_alpha_in_float32(quick, tmp_path) -> None:
    summary = train(quick(mode="lora+dyt", bf16=True, max_steps=2, eval_strategy="no", alpha_lr_multiplier=10.0,
                          output_dir=str(tmp_path / "bf16")))
    assert all(abs(a - 0.5) > 1e-3 for a in summary["alpha"].values())  # bf16 spacing would swallow small steps
    final = dytune.load(str(tmp_path / "bf16" / "final"))
    assert final.model.norm.alpha.dtype == torch.float32


def test_gated_run_evaluates_the_gated_model_then_the_pure_dyt_one(quick, tmp_path) -> None:
    # step 0's evaluation (before any training step) sees every gate at 1: the original model; the final one,
    # after the schedule, the pure DyT student
    summary = train(quick(mode="dyt-only", removal_ramp_steps=2, max_steps=2, eval_on_start=True, eval_steps=100,
                          learning_rate=1e-9, output_dir=str(tmp_path / "g")))
    twin = train(quick(norm="layernorm", mode="dyt-only", max_steps=1, eval_on_start=True, eval_steps=100,
                       learning_rate=1e-9, output_dir=str(tmp_path / "ln")))
    start = [r for r in read_metrics(tmp_path / "g" / "metrics.jsonl") if "eval_loss" in r][0]
    original = [r for r in read_metrics(tmp_path / "ln" / "metrics.jsonl") if "eval_loss" in r][0]
    assert start["step"] == 0 and start["eval_loss"] == pytest.approx(original["eval_loss"], abs=1e-5)
    assert start["eval_removal_gate"] == 1.0 and "eval_removal_gate" not in original
    assert abs(summary["final_eval"]["eval_loss"] - start["eval_loss"]) > 0.01  # constant:0.5 DyT differs
    assert twin["status"] == "completed"


def test_gated_removal_from_a_linear_refit_starts_at_the_original(quick, tmp_path) -> None:
    # a linear refit changes the linear layers, so the gates mix one layer down (NormGates.from_original):
    # step 0 (every gate 1) is still the original model; after the schedule the saved model is pure DyT
    summary = train(quick(mode="full", distill=True, alpha_init="calibrated", calibration_refit="linear",
                          removal_order="depth", removal_groups=2, removal_ramp_steps=1, removal_hold_steps=1,
                          max_steps=4, eval_on_start=True, eval_steps=100, learning_rate=1e-9,
                          output_dir=str(tmp_path / "g")))
    twin = train(quick(norm="layernorm", mode="full", max_steps=1, eval_on_start=True, eval_steps=100,
                       learning_rate=1e-9, output_dir=str(tmp_path / "ln")))
    start = [r for r in read_metrics(tmp_path / "g" / "metrics.jsonl") if "eval_loss" in r][0]
    original = [r for r in read_metrics(tmp_path / "ln" / "metrics.jsonl") if "eval_loss" in r][0]
    assert start["step"] == 0 and start["eval_loss"] == pytest.approx(original["eval_loss"], abs=1e-4)
    assert abs(summary["final_eval"]["eval_loss"] - start["eval_loss"]) > 1e-3  # the refitted DyT model differs
    gates = [round(r["removal_gate"], 3) for r in read_metrics(tmp_path / "g" / "metrics.jsonl") if "loss" in r]
    assert gates[0] == 1.0 and gates[-1] == 0.0
    final = dytune.load(str(tmp_path / "g" / "final"))
    assert not [m for m in final.modules() if "Norm" in type(m).__name__]
    assert twin["status"] == "completed"


def test_gated_removal_of_a_saved_dyt_model_uses_the_teacher(quick, tiny_dir, tmp_path) -> None:
    # a DyT checkpoint converted in another process (linear refit) has no norms beside it: the gates come
    # from `teacher:`, and step 0 is the teacher's loss
    from dytune.testing import tiny_tokenizer

    model = dytune.load(str(tiny_dir))
    dytune.convert(model, tokenizer=tiny_tokenizer(), calibration=[f"text number {i} of a few" for i in range(16)],
                   calibration_refit="linear", progress=False)
    dytune.save(model, tmp_path / "dyt", tiny_tokenizer())
    gated = dict(mode="full", distill=True, removal_ramp_steps=2, max_steps=2, eval_on_start=True,
                 eval_steps=100, learning_rate=1e-9)
    train(quick(model=str(tmp_path / "dyt"), teacher=str(tiny_dir), output_dir=str(tmp_path / "g"), **gated))
    train(quick(norm="layernorm", mode="full", max_steps=1, eval_on_start=True, eval_steps=100,
                learning_rate=1e-9, output_dir=str(tmp_path / "ln")))
    start = [r for r in read_metrics(tmp_path / "g" / "metrics.jsonl") if "eval_loss" in r][0]
    original = [r for r in read_metrics(tmp_path / "ln" / "metrics.jsonl") if "eval_loss" in r][0]
    assert start["eval_loss"] == pytest.approx(original["eval_loss"], abs=1e-4)
    with pytest.raises(DytuneError, match=r"needs the original model: convert in this run .* or distill: true with teacher:"):
        train(quick(model=str(tmp_path / "dyt"), distill=False, output_dir=str(tmp_path / "no"),
                    **{k: v for k, v in gated.items() if k != "distill"}))


def test_reconstruction_stage_runs_before_training(quick, tmp_path) -> None:
    summary = train(quick(mode="full", distill=True, reconstruct_steps=4, reconstruct_tokens=200,
                          reconstruct_lr=3e-3, reconstruct_max_grad_norm=1.0, alpha_init="constant:40", max_steps=1,
                          eval_strategy="no", output_dir=str(tmp_path / "r")))
    rec = summary["reconstruction"]
    assert rec["tokens"] >= 200 and rec["steps_per_block"] == 4
    assert [b["block"] for b in rec["blocks"]] == [0, 1, "model.norm"]
    assert all(b["nmse_after"] < b["nmse_before"] for b in rec["blocks"])  # no linear refit here: all fitted
    with pytest.raises(DytuneError, match="teacher must be a separate copy"):
        train(quick(mode="dyt-only", distill=True, reconstruct_steps=1, max_steps=1, eval_strategy="no",
                    output_dir=str(tmp_path / "r2")))
    assert not (tmp_path / "r2").exists()  # a refused run leaves no run directory behind


def test_best_checkpoint_is_found_after_the_atomic_rename(quick, tmp_path, caplog) -> None:
    train(quick(max_steps=4, eval_steps=2, save_steps=2, load_best_model_at_end=True,
                metric_for_best_model="eval_loss", output_dir=str(tmp_path / "best")))
    state = json.loads(sorted((tmp_path / "best").glob("checkpoint-*/trainer_state.json"))[-1].read_text())
    assert state["best_model_checkpoint"] == str(tmp_path / "best" / f"checkpoint-{state['best_global_step']}")
    assert "Could not locate the best model" not in caplog.text
