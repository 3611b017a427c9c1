"""Each configs/study set-up trains end to end, with its LayerNorm twin, on a tiny model of the same architecture
saved to disk (GPT-2 classes for DistilGPT2, GPT-NeoX for Pythia) and on local stand-ins of its data: every
setting of the config as written, but the model, the data's location and size, the step count and fp16 (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from study_helpers import STUDY, localise, study_config

from transformers import AutoTokenizer

from dytune.data.templates import NAMED_TEMPLATES
from dytune.train import train
from dytune.train.config import parse_config

QUICK = dict(max_steps=2, eval_steps=1, save_steps=2, fp16=False, report_to="none", disable_tqdm=True,
             per_device_train_batch_size=4, per_device_eval_batch_size=4, logging_steps=1, dataloader_num_workers=0)


@pytest.fixture(scope="module")
def local_files(tmp_path_factory) -> dict[str, str]:
    """Alpaca and ShareGPT stand-ins in their Hub files' formats."""
    root = tmp_path_factory.mktemp("study_data")
    alpaca = [{"instruction": f"Give tip {i} for staying healthy.", "input": "" if i % 3 else f"Context {i}.",
               "output": f"Tip {i}: sleep well and eat a balanced diet.", "text": "unused"} for i in range(24)]
    sharegpt = [{"id": f"s{i}", "conversations": [{"from": "human", "value": f"Question {i}?"},
                                                  {"from": "gpt", "value": f"Answer {i}, in full."},
                                                  {"from": "human", "value": "Thanks!"},
                                                  {"from": "gpt", "value": "You are welcome."}]} for i in range(24)]
    (root / "alpaca.json").write_text(json.dumps(alpaca))
    (root / "sharegpt.json").write_text(json.dumps(sharegpt))
    return {"tatsu-lab/alpaca": str(root / "alpaca.json"),
            "anon8231489123/ShareGPT_Vicuna_unfiltered": str(root / "sharegpt.json")}


def run_pair(name: str, model_dir: Path, standins: dict, tmp_path: Path, max_length: int) -> dict[str, dict]:
    """Train `name` and its twin; {"dyt": run info, "layernorm": run info}."""
    out = {}
    for norm, config in (("dyt", name), ("layernorm", f"{name}-layernorm")):
        data = localise(study_config(config)["data"], standins, {200_000: 16, 2_000: 6})
        data.update(max_length=max_length, cache_dir=str(tmp_path / "cache"))
        cfg = parse_config(STUDY / f"{config}.yaml", [], model=str(model_dir), data=data,
                           output_dir=str(tmp_path / norm), **QUICK)
        assert cfg.norm == norm
        summary = train(cfg)
        assert summary["status"] == "completed" and summary["global_step"] == 2
        run = Path(summary["run_dir"])
        out[norm] = {"summary": summary, "report": json.loads((run / "data_report.json").read_text()),
                     "final_template": AutoTokenizer.from_pretrained(run / "final").chat_template,
                     "adapter": json.loads((run / "adapter" / "adapter_config.json").read_text())
                     if summary["adapter"] else None}
    return out


def check_study_lora(runs: dict, targets: set[str], template: str = "concat") -> None:
    for norm, info in runs.items():
        s = info["summary"]
        assert set(s["trainable_parameters"]) == {"decay"}, norm  # LoRA only: the norms stay frozen
        assert set(info["adapter"]["target_modules"]) == targets
        assert info["adapter"]["r"] == 8 and info["adapter"]["lora_alpha"] == 32
        notes = " ".join(info["report"]["notes"])
        assert f"chat template: {template}" in notes and "every EOS token masked" in notes
        assert info["final_template"] == NAMED_TEMPLATES[template]  # `dytune answer` prompts as training did
    dyt = runs["dyt"]["summary"]
    assert dyt["conversion"] == {"alpha_init": "constant:0.5", "layers": 5}  # ln_1, ln_2 x 2 blocks, ln_f
    assert set(dyt["alpha"].values()) == {0.5}  # frozen by LoRA, as get_peft_model froze the study's DyT
    assert runs["layernorm"]["summary"]["alpha"] in ({}, None)
    assert dyt["trainable_parameters"] == runs["layernorm"]["summary"]["trainable_parameters"]


def test_distilgpt2_lora_alpaca_and_twin(tiny_gpt2_dir, local_files, tmp_path):
    runs = run_pair("distilgpt2-lora-alpaca", tiny_gpt2_dir, local_files, tmp_path, 64)
    check_study_lora(runs, {"c_attn"})
    tok = runs["dyt"]["report"]["tokenized"]
    assert tok["truncated"] < tok["examples"]
    # every token is trained but the EOS that ends each example (truncated ones lost theirs)
    assert tok["trainable_tokens"] == tok["tokens"] - (tok["examples"] - tok["truncated"])


def test_distilgpt2_lora_sharegpt_first_turns_and_twin(tiny_gpt2_dir, local_files, tmp_path):
    runs = run_pair("distilgpt2-lora-sharegpt", tiny_gpt2_dir, local_files, tmp_path, 64)
    check_study_lora(runs, {"c_attn"})
    assert runs["dyt"]["report"]["turns"] == 2 * runs["dyt"]["report"]["selected"]  # one user + one assistant


def test_distilgpt2_lora_rewild_and_twin(tiny_gpt2_dir, hub_standins, tmp_path):
    runs = run_pair("distilgpt2-lora-rewild", tiny_gpt2_dir, hub_standins, tmp_path, 48)
    check_study_lora(runs, {"c_attn", "c_fc", "c_proj"})
    assert [s["kept"] for s in runs["dyt"]["report"]["sources"]] == [16, 8, 6]


@pytest.mark.parametrize("size, alpha", [("14m", 0.5), ("410m", 1.0)])
def test_pythia_full_sft_and_twin(tiny_neox_dir, hub_standins, tmp_path, size, alpha):
    runs = run_pair(f"pythia-{size}-full-rewild", tiny_neox_dir, hub_standins, tmp_path, 64)
    dyt, twin = runs["dyt"]["summary"], runs["layernorm"]["summary"]
    assert dyt["conversion"]["alpha_init"] == f"constant:{alpha}" and dyt["adapter"] is None
    assert {"alpha", "affine", "decay"} <= set(dyt["trainable_parameters"])  # full SFT trains the DyT too
    assert all(abs(a - alpha) > 0 for a in dyt["alpha"].values())  # ... so alpha moved from its init
    assert "affine" in twin["trainable_parameters"] and "alpha" not in twin["trainable_parameters"]
    for info in runs.values():
        notes = " ".join(info["report"]["notes"])
        assert "chat template: prompt-completion" in notes and "EOS token masked" not in notes
        sources = [s["source"] for s in info["report"]["sources"]]
        assert sources[-1].startswith("validation: ") and info["report"]["selected"] == 16 + 8 + 6 + 6
