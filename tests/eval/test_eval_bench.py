"""`dytune bench`: interleaved model throughput, norm-vs-DyT microbenchmark, JSON output, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from dytune.cli import main
from dytune.errors import DytuneError
from dytune.eval.speed import BenchSettings, bench_models, bench_norm_layers, markdown, norm_module_of
from dytune.testing import tiny_model

TINY = BenchSettings(batch_sizes=[1, 2], prompt_lengths=[8, 16], new_tokens=3, warmup=1, repeats=2)


@pytest.fixture(scope="module")
def twins():
    from dytune import convert

    ln = tiny_model("llama")
    dyt = copy.deepcopy(ln)
    convert(dyt, alpha_init="constant:1.0")
    return {"ln": ln, "dyt": dyt}


def test_bench_models_interleaved(twins, monkeypatch):
    import dytune.eval.speed as speed

    order = []
    real = speed._one_run

    def spy(model, ids, new_tokens):
        order.append(("ln" if model is twins["ln"] else "dyt", tuple(ids.shape)))
        return real(model, ids, new_tokens)

    monkeypatch.setattr(speed, "_one_run", spy)
    result = bench_models(twins, TINY, progress=False)
    assert len(order) == 3 * 4 * 2  # (warm-up + 2 repeats) x 4 cases x 2 models
    # each case runs both models back to back, and who goes first alternates between rounds
    assert order[0] == ("ln", (1, 8)) and order[1] == ("dyt", (1, 8)) and order[8] == ("dyt", (1, 8))
    assert len(result["results"]) == 8
    for row in result["results"]:
        assert row["prefill_tok_s"]["n"] == 2 and row["prefill_tok_s"]["median"] > 0
        assert row["decode_tok_s"]["min"] <= row["decode_tok_s"]["median"] <= row["decode_tok_s"]["max"]
        assert row["kv_cache_bytes"] > 0
    # KV cache: 2 layers x (K, V) x batch x 2 kv heads x (prompt + new_tokens) positions x 16 dims x 4 bytes
    row = next(r for r in result["results"] if r["model"] == "ln" and r["batch"] == 2 and r["prompt"] == 16)
    assert row["kv_cache_bytes"] == 2 * 2 * 2 * 2 * (16 + 3) * 16 * 4
    assert result["models"]["ln"]["norm_modules"] == {"LlamaRMSNorm": 5}
    assert result["models"]["dyt"]["norm_modules"] == {"DyT": 5}
    ratios = [r for r in result["ratios"] if "prefill" in r]
    assert len(ratios) == 4 and all(r["model"] == "dyt" and r["vs"] == "ln" and r["decode"] > 0 for r in ratios)
    total = [r for r in result["ratios"] if "total_time" in r][0]
    assert total["total_time"] == pytest.approx(result["total_timed_seconds"]["dyt"] /
                                                result["total_timed_seconds"]["ln"])
    text = markdown(result)
    assert "| dyt / ln | 2 | 16 |" in text and "Total timed seconds" in text


def test_norm_microbenchmark_eager(twins):
    norm = norm_module_of(twins["ln"])
    assert type(norm).__name__ == "LlamaRMSNorm" and norm is not twins["ln"].model.norm
    rows = bench_norm_layers(norm, 64, shape=(2, 8), compile=False, min_run_time=0.01, rounds=2)
    assert [(r["module"], r["mode"], r["pass"]) for r in rows] == [
        ("LlamaRMSNorm", "eager", "forward"), ("LlamaRMSNorm", "eager", "forward+backward"),
        ("DyT", "eager", "forward"), ("DyT", "eager", "forward+backward")]
    assert all(r["min_us"] <= r["median_us"] <= r["max_us"] and r["rounds"] == 2 for r in rows)
    assert all(r["shape"] == [2, 8, 64] for r in rows)
    with pytest.raises(DytuneError, match="needs a CUDA GPU"):
        bench_norm_layers(norm, 64, shape=(2, 8), compile=False, fused=True)


@pytest.mark.slow
def test_norm_microbenchmark_compiled(twins):
    rows = bench_norm_layers(norm_module_of(twins["ln"]), 64, shape=(2, 8), compile=True, backward=False,
                             min_run_time=0.01)
    compiled = [r for r in rows if r["mode"] == "compile"]
    assert len(compiled) == 2 and all("median_us" in r for r in compiled), compiled


def test_context_too_short_is_an_error(twins):
    with pytest.raises(DytuneError, match="exceeds the models' context of 128"):
        bench_models(twins, BenchSettings(prompt_lengths=[128], new_tokens=4), progress=False)


def test_bench_cli_norm_swap_writes_json(tiny_chat_dir, tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["bench", str(tiny_chat_dir), "--norm-swap", "--batch-sizes", "1", "--prompt-lengths", "8",
                 "--new-tokens", "2", "--repeats", "2", "--no-compile", "--micro-shape", "1,8", "--micro-rounds", "1",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    labels = list(data["models"])
    assert labels == [str(tiny_chat_dir), f"{tiny_chat_dir}+DyT"]
    assert data["models"][labels[1]]["norm_modules"] == {"DyT": 5}
    assert data["settings"]["repeats"] == 2 and data["machine"]["torch"] == torch.__version__
    assert {r["module"] for r in data["norm_layers"]} == {"LlamaRMSNorm", "DyT"}
    assert out.with_suffix(".md").read_text().startswith("Device: CPU")
    assert "prefill tok/s" in capsys.readouterr().out


def test_bench_cli_errors(tiny_chat_dir, capsys):
    assert main(["bench", str(tiny_chat_dir), "--fused", "--no-norm-micro"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert main(["bench", str(tiny_chat_dir), str(tiny_chat_dir), "--norm-swap", "--batch-sizes", "1",
                 "--prompt-lengths", "8", "--new-tokens", "1", "--repeats", "1", "--no-norm-micro"]) == 2
    assert "give one model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", str(tiny_chat_dir), "--batch-sizes", "0"])


def test_study_timing_is_one_batched_greedy_generate_per_model(tiny_chat_dir, questions_file, tmp_path, monkeypatch):
    import dytune.eval.mtbench as mtbench

    calls = []
    real = mtbench.generate_batch

    def spy(model, tokenizer, prompts, **kw):
        calls.append((type(model).__name__, len(prompts), kw))
        return real(model, tokenizer, prompts, **kw)

    monkeypatch.setattr(mtbench, "generate_batch", spy)
    out = tmp_path / "study.json"
    assert main(["bench", str(tiny_chat_dir), "--norm-swap", "--study-timing", "--questions", str(questions_file),
                 "--max-new-tokens", "3", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["model"] for r in data["results"]] == [str(tiny_chat_dir), f"{tiny_chat_dir}+DyT"]
    # one call per model, all 5 questions in one batch, both turns as one prompt, greedy, the given limit
    assert [(c[1], c[2]["concat_turns"], c[2]["temperature"], c[2]["max_new_tokens"]) for c in calls] == [(5, True, 0.0, 3)] * 2
    for row in data["results"]:
        assert row["prompts"] == 5 and 5 <= row["generated_tokens"] <= 15 and row["seconds"] > 0
    assert data["ratio_seconds"][f"{tiny_chat_dir}+DyT"] == pytest.approx(
        data["results"][1]["seconds"] / data["results"][0]["seconds"])
    assert out.with_suffix(".md").read_text().startswith("Study timing: one batched greedy generate over 5")
    assert main(["bench", str(tiny_chat_dir), "--study-timing", "--questions", str(questions_file),
                 "--max-new-tokens", "0"]) == 2


def test_bench_bfloat16_keeps_dyt_parameters_float32(tiny_chat_dir, tmp_path):
    out = tmp_path / "bf16.json"
    assert main(["bench", str(tiny_chat_dir), "--norm-swap", "--dtype", "bfloat16", "--batch-sizes", "1",
                 "--prompt-lengths", "8", "--new-tokens", "2", "--repeats", "1", "--no-norm-micro",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    plain, dyt = data["models"].values()
    assert data["settings"]["dtype"] == "bfloat16"
    # bf16 weights: 2 bytes a parameter, except DyT's float32 alpha/weight (4 bytes)
    assert plain["weight_bytes"] < 2.2 * plain["parameters"]
    assert dyt["weight_bytes"] - 2 * dyt["parameters"] >= 2 * 5 * 64  # 5 DyT weights of 64 kept in float32


def test_static_generation_path_times_the_same_steps(twins):
    settings = BenchSettings(batch_sizes=[2], prompt_lengths=[8], new_tokens=3, warmup=0, repeats=1,
                             generation="static")
    result = bench_models(twins, settings, progress=False)
    assert {r["model"] for r in result["results"]} == {"ln", "dyt"}
    for row in result["results"]:
        assert row["prefill_s"]["median"] > 0 and row["decode_s"]["median"] > 0
    with pytest.raises(DytuneError, match="--generation 'compiled': choose one of eager, static"):
        bench_models(twins, BenchSettings(generation="compiled"), progress=False)
