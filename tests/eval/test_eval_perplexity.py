"""`dytune eval --data`: loss and perplexity through training's data pipeline; `--tasks` through lm-eval."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from dytune.cli import main
from dytune.data import DataSpec, load_conversations, tokenize_conversations
from dytune.errors import DytuneError
from dytune.eval.perplexity import evaluate_loss, evaluate_models, token_loss
from dytune.testing import tiny_model, tiny_tokenizer

CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "The capital of France is Paris."}]},
    {"messages": [{"role": "user", "content": "Give three tips for staying healthy."},
                  {"role": "assistant", "content": "Eat a balanced diet, exercise, and sleep well."},
                  {"role": "user", "content": "And one more?"},
                  {"role": "assistant", "content": "Drink water."}]},
    {"messages": [{"role": "user", "content": "def add(a, b):"},
                  {"role": "assistant", "content": "    return a + b"}]},
] * 4  # 12 conversations


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "convs.jsonl"
    path.write_text("".join(json.dumps({"id": f"c{i}", **c}) + "\n" for i, c in enumerate(CONVERSATIONS)))
    return path


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    path = tmp_path_factory.mktemp("d") / "c.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    convs, _ = load_conversations(str(path))
    tok = tiny_tokenizer(chat_template=True)
    return {on: tokenize_conversations(convs, tok, max_length=64, train_on=on, cache_dir=False)
            for on in ("assistant", "all")}


def test_loss_matches_transformers_own_loss(tokenized):
    model = tiny_model("llama")
    ds = tokenized["assistant"]
    total = token_loss(model, ds, batch_size=5)
    nll, count = 0.0, 0
    for row in ds:  # transformers' mean loss per example, weighted back to token sums
        ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
        n = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            nll += float(model(input_ids=ids, labels=labels).loss) * n
        count += n
    assert total.tokens == count and total.examples == 12
    assert total.loss == pytest.approx(nll / count, rel=1e-5)
    assert total.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert token_loss(model, ds, batch_size=1).loss == pytest.approx(total.loss, rel=1e-5)  # padding-free


def test_token_counts_and_a_known_perplexity(tokenized):
    model = tiny_model("llama")
    with torch.no_grad():
        model.lm_head.weight.zero_()  # uniform next-token distribution: loss = ln(V), perplexity = V
    for on, ds in tokenized.items():
        total = token_loss(model, ds)
        expected = sum(sum(1 for x in row["labels"][1:] if x != -100) for row in ds)
        assert total.tokens == expected
        assert total.loss == pytest.approx(math.log(320), rel=1e-6)
        assert total.perplexity == pytest.approx(320, rel=1e-5)
    all_tokens = token_loss(model, tokenized["all"]).tokens
    assert all_tokens == sum(len(r["input_ids"]) - 1 for r in tokenized["all"])
    assert token_loss(model, tokenized["assistant"]).tokens < all_tokens


def test_same_split_and_numbers_as_training(tiny_chat_dir, data_file, tmp_path):
    spec = DataSpec(source=str(data_file), val_fraction=0.25, max_length=64, seed=3, cache_dir=str(tmp_path / "c"))
    result = evaluate_models([str(tiny_chat_dir)], spec, split="val", progress=False)
    # what training would compute on its validation split
    from dytune.models import load_model, load_tokenizer

    tok = load_tokenizer(str(tiny_chat_dir))
    _, val_tok, _ = spec.prepare(tok)
    expected = token_loss(load_model(str(tiny_chat_dir)), val_tok)
    got = result["models"][0]["assistant"]
    assert got["tokens"] == expected.tokens and got["loss"] == pytest.approx(expected.loss, rel=1e-6)
    assert result["data"]["conversations"] == 3 and got["examples"] == 3


def test_eval_cli_dyt_and_layernorm_in_one_table(tiny_chat_dir, data_file, tmp_path, capsys):
    from dytune import convert
    from dytune.models import load_model

    dyt = load_model(str(tiny_chat_dir))
    convert(dyt, alpha_init="constant:0.5")
    dyt_dir = tmp_path / "tiny-dyt"
    dyt.save_pretrained(dyt_dir)
    tiny_tokenizer(chat_template=True).save_pretrained(dyt_dir)

    out = tmp_path / "eval.json"
    assert main(["eval", str(tiny_chat_dir), str(dyt_dir), "--data", str(data_file), "--split", "all",
                 "--max-length", "64", "--out", str(out)]) == 0
    data = json.loads(out.read_text())["loss"]
    ln_row, dyt_row = data["models"]
    assert data["data"]["split"] == "all" and data["data"]["conversations"] == 12
    assert ln_row["assistant"]["tokens"] == dyt_row["assistant"]["tokens"] > 0
    assert ln_row["all"]["tokens"] > ln_row["assistant"]["tokens"]
    assert ln_row["assistant"]["loss"] != pytest.approx(dyt_row["assistant"]["loss"], rel=1e-3)
    # the reloaded DyT directory scores exactly what the in-memory converted model does
    convs, _ = load_conversations(str(data_file))
    direct = evaluate_loss(dyt, tiny_tokenizer(chat_template=True), convs, max_length=64, cache_dir=False)
    assert dyt_row["assistant"]["loss"] == pytest.approx(direct["assistant"]["loss"], rel=1e-5)
    table = capsys.readouterr().out
    assert "| assistant tokens | assistant loss | assistant ppl |" in table and str(dyt_dir) in table


def test_eval_errors(tiny_chat_dir, tmp_path, capsys):
    assert main(["eval", str(tiny_chat_dir)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["eval", str(tiny_chat_dir), "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    import datasets

    small = tiny_model("llama", vocab_size=300)  # the tokenizer gained tokens the model has no embedding for
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 310, 5]], "labels": [[-100, 310, 5]]})
    with pytest.raises(DytuneError, match="uses token id 310 but the model has only 300 embeddings"):
        token_loss(small, ds)


LM_TASK = """task: dytune_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.mark.slow  # lm-eval indexes its ~15,000 task definitions on start: 15-40 s on 2 cores
def test_lm_eval_harness_on_a_local_task(tiny_chat_dir, tmp_path):
    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm-evaluation-harness is not installed; see dytune.eval.harness.INSTALL_HINT")
    rows = [{"question": "The capital of France is", "choices": [" Paris", " dog", " fox"], "label": 0},
            {"question": "The quick brown fox jumps over the lazy", "choices": [" dog", " Paris"], "label": 0},
            {"question": "Eat a balanced", "choices": [" diet", " fox", " France", " sleep"], "label": 3}]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny.yaml").write_text(LM_TASK.format(data=tmp_path / "mc.jsonl"))
    # a model that always prefers " Paris": its accuracy is known (1 of 3)
    from dytune.eval.harness import run_tasks
    from dytune.models import load_model, load_tokenizer

    tok = load_tokenizer(str(tiny_chat_dir))
    model = load_model(str(tiny_chat_dir))
    paris = tok(" Paris", add_special_tokens=False)["input_ids"]
    head = torch.nn.Linear(64, 320, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-5.0)
        head.bias[paris] = 5.0
    model.lm_head = head
    res = run_tasks(model, tok, ["dytune_tiny_mc"], include_path=str(tasks), batch_size=2)
    assert res["results"]["dytune_tiny_mc"]["acc,none"] == pytest.approx(1 / 3)
    assert res["results"]["dytune_tiny_mc"]["samples"] == 3

    out = tmp_path / "tasks.json"
    assert main(["eval", str(tiny_chat_dir), "--tasks", "dytune_tiny_mc", "--include-path", str(tasks),
                 "--out", str(out)]) == 0
    row = json.loads(out.read_text())["tasks"]["models"][0]
    assert 0.0 <= row["results"]["dytune_tiny_mc"]["acc,none"] <= 1.0
    with pytest.raises(DytuneError, match="unknown lm-eval task"):
        run_tasks(model, tok, ["no_such_task_xyz"], include_path=str(tasks))


def test_missing_lm_eval_is_a_clear_error(tiny_chat_dir, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ImportError("No module named 'lm_eval'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    assert main(["eval", str(tiny_chat_dir), "--tasks", "hellaswag"]) == 2
    err = capsys.readouterr().err
    assert "--tasks needs lm-evaluation-harness" in err and "pip install --no-deps lm_eval" in err


def test_shared_alpaca_sample(tiny_chat_dir, shared_data):
    """The real Alpaca sample (../shared/data)."""
    path = shared_data / "alpaca_sample.json"
    spec = DataSpec(source=str(path), max_samples=24, max_length=96)
    result = evaluate_models([str(tiny_chat_dir)], spec, split="all", progress=False)
    row = result["models"][0]
    # training drops an example whose assistant turn is truncated away; with every token labelled none is
    assert row["all"]["examples"] == 24 and 0 < row["assistant"]["examples"] < 24
    assert row["all"]["tokens"] > row["assistant"]["tokens"] > 100
    assert 1 < row["assistant"]["perplexity"] < 10_000
