"""Golden tests: every configs/study set-up resolves under `dytune train --dry-run` to the values the original
study's notebooks (MRROBOT401/DyT-NoNorm-LLMs-REWILD) ran with, and its LayerNorm twin differs only in the norm."""

from __future__ import annotations

import json

import pytest

from dytune.cli import main

from study_helpers import MMLU, STUDY, TULU, WILDCHAT

# DyT-only settings and the run's own paths: what a LayerNorm twin may differ in
TWIN_FREE = {"norm", "alpha_init", "keep_affine", "output_dir", "logging_dir", "run_name"}
STUDY_DYT = {"norm": "dyt", "keep_affine": False, "distill": False}  # gamma/beta dropped, no distillation
LORA = {"mode": "lora", "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.05, "learning_rate": 5e-5,
        "lr_scheduler_type": "cosine", "warmup_steps": 0.1, "weight_decay": 0.01, "fp16": True, "bf16": False,
        "seed": 42, "optim": "adamw_torch", "load_best_model_at_end": True, "metric_for_best_model": "eval_loss",
        "eval_steps": 500, "save_steps": 1000, "logging_steps": 100}
LORA_DATA = {"chat_template": "concat", "train_on": "all", "mask_eos": True, "val_fraction": 0.05, "val_method": "rows",
             "seed": 42}
TRL_SFT = {"mode": "full", "learning_rate": 2e-5, "lr_scheduler_type": "linear", "warmup_steps": 0,
           "weight_decay": 0.0, "num_train_epochs": 3, "per_device_train_batch_size": 8, "fp16": False,
           "bf16": False, "seed": 42, "load_best_model_at_end": False, "save_strategy": "epoch"}
TRL_DATA = {"chat_template": "prompt-completion", "train_on": "assistant", "mask_eos": False, "max_length": 512,
            "val_fraction": 0.0}
REWILD_MIX = [
    {"source": WILDCHAT, "format": "messages", "turns": "first", "shuffle_seed": 42, "take": 200_000},
    {"source": MMLU, "name": "auxiliary_train", "format": "multiple_choice", "mmlu_answer_bug": False},
    {"source": TULU, "format": "messages", "turns": "first"},
]


def dry_run(name: str, capsys, *flags: str) -> dict:
    assert main(["train", str(STUDY / f"{name}.yaml"), "--dry-run", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def check(resolved: dict, expected: dict) -> None:
    got = {k: resolved[k] for k in expected}
    assert got == expected


def check_twin(name: str, capsys, dyt: dict, *, data_differs: dict | None = None) -> dict:
    twin = dry_run(f"{name}-layernorm", capsys)
    assert twin["norm"] == "layernorm"
    expected = {k: v for k, v in dyt.items() if k not in TWIN_FREE}
    expected["data"] = {**dyt["data"], **(data_differs or {})}
    assert {k: v for k, v in twin.items() if k not in TWIN_FREE} == expected
    return twin


def test_distilgpt2_lora_alpaca(capsys):
    """notebooks/train_alpaca_distillgpt2.ipynb"""
    cfg = dry_run("distilgpt2-lora-alpaca", capsys)
    check(cfg, {"model": "distilgpt2", **LORA, **STUDY_DYT, "alpha_init": "constant:0.5",
                "lora_target_modules": ["c_attn"], "num_train_epochs": 3, "per_device_train_batch_size": 16,
                "per_device_eval_batch_size": 64, "gradient_accumulation_steps": 1})
    check(cfg["data"], {"source": "tatsu-lab/alpaca", "format": "alpaca", "max_length": 512, "turns": "all",
                        **LORA_DATA})
    check_twin("distilgpt2-lora-alpaca", capsys, cfg)


def test_distilgpt2_lora_sharegpt_first_turns(capsys):
    """notebooks/train_sharegpt.ipynb"""
    cfg = dry_run("distilgpt2-lora-sharegpt", capsys)
    check(cfg, {"model": "distilgpt2", **LORA, **STUDY_DYT, "alpha_init": "constant:0.5",
                "lora_target_modules": ["c_attn"], "num_train_epochs": 3, "per_device_train_batch_size": 16,
                "per_device_eval_batch_size": 64})
    check(cfg["data"], {"source": "anon8231489123/ShareGPT_Vicuna_unfiltered", "format": "sharegpt",
                        "turns": "first", "max_length": 512, **LORA_DATA,
                        "extra": {"data_files": "ShareGPT_V3_unfiltered_cleaned_split.json"},
                        "role_map": {"user": None, "chatgpt": None, "bing": None, "bard": None}})
    check_twin("distilgpt2-lora-sharegpt", capsys, cfg)


def test_distilgpt2_lora_rewild(capsys):
    """notebooks/train_selective_unfreeze_rewild.ipynb on the mix of notebooks/modReWILDcreate.ipynb"""
    cfg = dry_run("distilgpt2-lora-rewild", capsys)
    check(cfg, {"model": "distilgpt2", **LORA, **STUDY_DYT, "alpha_init": "constant:0.5",
                "lora_target_modules": ["c_attn", "c_fc", "c_proj"], "num_train_epochs": 1,
                "per_device_train_batch_size": 16, "per_device_eval_batch_size": 32})  # 4 (8) x 4 GPUs
    check(cfg["data"], {"source": REWILD_MIX, "max_length": 256, **LORA_DATA})
    check_twin("distilgpt2-lora-rewild", capsys, cfg)  # the real twin: 256 tokens too
    study_ln = dry_run("distilgpt2-lora-rewild-layernorm-512", capsys)  # the notebook's own LayerNorm run
    assert study_ln["norm"] == "layernorm" and study_ln["data"]["max_length"] == 512
    assert {k: v for k, v in study_ln.items() if k not in TWIN_FREE | {"data"}} == \
        {k: v for k, v in cfg.items() if k not in TWIN_FREE | {"data"}}


@pytest.mark.parametrize("size, alpha, save_total_limit", [("14m", "constant:0.5", None), ("410m", "constant:1.0", 4)])
def test_pythia_full_sft(capsys, size, alpha, save_total_limit):
    """notebooks/pythia17m.ipynb (Pythia-14m) and notebooks/pythia410m.ipynb (alpha 1.0): TRL SFTConfig defaults"""
    cfg = dry_run(f"pythia-{size}-full-rewild", capsys)
    check(cfg, {"model": f"EleutherAI/pythia-{size}", **TRL_SFT, **STUDY_DYT, "alpha_init": alpha,
                "save_total_limit": save_total_limit, "gradient_accumulation_steps": 1})
    check(cfg["data"], {"source": REWILD_MIX, **TRL_DATA})
    assert cfg["data"]["val_source"][0]["skip"] == 200_000  # held out: rows the study's shuffle did not select
    check_twin(f"pythia-{size}-full-rewild", capsys, cfg)


def test_mmlu_answer_bug_is_one_flag_away(capsys):
    cfg = dry_run("distilgpt2-lora-rewild", capsys)
    assert [s.get("mmlu_answer_bug") for s in cfg["data"]["source"]] == [None, False, None]


def test_dry_run_loads_nothing_and_reports_fp16_without_a_gpu(capsys, monkeypatch):
    import torch

    import dytune.models

    def refuse(*args, **kwargs):
        raise AssertionError("--dry-run loaded a model")

    monkeypatch.setattr(dytune.models, "load_model", refuse)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", str(STUDY / "distilgpt2-lora-alpaca.yaml"), "--dry-run", "--learning_rate", "1e-4",
                 "--data.max_length", "128"]) == 0
    out = capsys.readouterr()
    cfg = json.loads(out.out)
    assert cfg["fp16"] is True and cfg["learning_rate"] == 1e-4 and cfg["data"]["max_length"] == 128
    assert "trains in fp16, which needs a CUDA GPU" in out.err


def test_dry_run_still_rejects_bad_settings(capsys):
    assert main(["train", str(STUDY / "distilgpt2-lora-alpaca.yaml"), "--dry-run", "--mode", "lora-ish"]) == 2
    assert "mode must be one of" in capsys.readouterr().err
