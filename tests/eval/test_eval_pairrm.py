"""The PairRM port: agrees with llm-blender's own `DebertaV2PairRM` on a tiny checkpoint in PairRM-hf's layout."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from dytune.eval.judge import judge_answers, make_judge
from dytune.eval.pairrm import PairRM, conversation_pair, tokenize_pair

SOURCES = ["hello world", "what is the capital of France? " * 6, "a"]
CANDS_A = ["this is a good answer", "Paris", "b"]
CANDS_B = ["answer", "the capital is a world " * 12, "hello"]


def _import_reference():
    """llm-blender's own classes, or a skip that says why (never a silent pass)."""
    if importlib.util.find_spec("llm_blender") is None:
        pytest.skip("reference check needs llm-blender: pip install --no-deps llm-blender dataclasses-json "
                    "marshmallow typing-inspect mypy-extensions")
    import transformers.utils.hub as hub

    # llm-blender imports TRANSFORMERS_CACHE, which transformers 5 removed; any value lets it import
    if not hasattr(hub, "TRANSFORMERS_CACHE"):
        hub.TRANSFORMERS_CACHE = getattr(hub, "HF_HUB_CACHE", None) or "~/.cache/huggingface/hub"
    try:
        from llm_blender.blender.blender_utils import tokenize_pair as ref_tokenize_pair
        from llm_blender.pair_ranker.pairrm import DebertaV2PairRM
    except ImportError as err:
        pytest.skip(f"llm-blender is installed but does not import ({err}); install its missing dependency")
    return DebertaV2PairRM, ref_tokenize_pair


def test_port_matches_llm_blender_reference(tmp_path, pairrm_tokenizer, tiny_pairrm_config, randomize):
    DebertaV2PairRM, ref_tokenize_pair = _import_reference()
    torch.manual_seed(0)
    reference = DebertaV2PairRM(tiny_pairrm_config).eval()
    randomize(reference, seed=3)
    reference.save_pretrained(tmp_path)  # the reference's own key names = PairRM-hf's checkpoint layout
    port = PairRM.from_pretrained(tmp_path).eval()

    kw = dict(source_max_length=40, candidate_max_length=20)  # small, so truncation is exercised
    ref_enc = ref_tokenize_pair(pairrm_tokenizer, SOURCES, CANDS_A, CANDS_B, **kw)
    enc = tokenize_pair(pairrm_tokenizer, SOURCES, CANDS_A, CANDS_B, **kw)
    for i in range(len(SOURCES)):  # same tokens (the reference pads to the maximum, the port to the longest)
        ref_ids = ref_enc["input_ids"][i][ref_enc["attention_mask"][i].bool()]
        assert ref_ids.tolist() == enc["input_ids"][i][enc["attention_mask"][i].bool()].tolist()
    assert enc["input_ids"].shape[1] < ref_enc["input_ids"].shape[1]
    with torch.no_grad():
        expected = reference(**ref_enc).logits
        got = port(enc["input_ids"], enc["attention_mask"])
        one_by_one = torch.cat([port(enc["input_ids"][i:i + 1], enc["attention_mask"][i:i + 1]) for i in range(3)])
    assert expected.std() > 1e-3  # the check is not between two constants
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(one_by_one, expected, atol=1e-5, rtol=1e-4)  # padding does not matter


def test_tokenize_pair_layout(pairrm_tokenizer):
    enc = tokenize_pair(pairrm_tokenizer, ["hi"], ["good"], ["bad <|candidate1|>"], source_max_length=10,
                        candidate_max_length=5)
    tokens = pairrm_tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    assert tokens[:2] == ["[CLS]", "<|source|>"]
    assert tokens.count("<|candidate1|>") == 1  # a literal marker inside an answer is removed
    assert tokens.count("[CLS]") == 3 and tokens.count("[SEP]") == 3
    # candidates share what the source leaves of 10 + 2 x 5 tokens
    long = tokenize_pair(pairrm_tokenizer, ["hi"], ["good " * 50], ["bad " * 50], source_max_length=10,
                         candidate_max_length=5)
    assert int(long["attention_mask"].sum()) <= 20


def test_conversation_pair_formats():
    assert conversation_pair(["q1"], ["a"], ["b"]) == ("q1", "a", "b")
    source, a, b = conversation_pair(["q1", "q2"], ["a1", "a2"], ["b1", "b2"])
    assert source.endswith("USER: q1\nAssistant: <Response 1>\nUSER: q2\nAssistant: <Response 2>")
    assert a == "<Response 1>: a1\n<Response 2>: a2" and b == "<Response 1>: b1\n<Response 2>: b2"


def test_pairrm_judge_from_directory(tmp_path, tiny_pairrm_dir, questions_file, questions, make_answers):
    judge = make_judge(str(tiny_pairrm_dir), batch_size=3)
    assert judge.pairwise and judge.name.startswith("pairrm:")
    logits_ab = judge.compare(SOURCES, CANDS_A, CANDS_B)
    logits_ba = judge.compare(SOURCES, CANDS_B, CANDS_A)
    assert len(logits_ab) == 3 and all(isinstance(x, float) for x in logits_ab)
    assert logits_ab != [-x for x in logits_ba]  # a real (position-biased) model: why both orders are judged
    a = make_answers(tmp_path / "a.jsonl", "a", {q["question_id"]: ["hello world", "good"] for q in questions})
    b = make_answers(tmp_path / "b.jsonl", "b", {q["question_id"]: ["Paris", "answer"] for q in questions})
    result = judge_answers(a, b, judge=judge, questions_path=questions_file, n_boot=100, out_prefix=tmp_path / "j")
    overall = result["summary"]["overall"]
    assert overall["n"] == 10 and overall["win"] + overall["tie"] + overall["loss"] == 10
    assert result["both_orders"] is True and (tmp_path / "j.png").is_file()


def test_pairrm_offline_error_says_what_to_do(monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    from dytune.errors import DytuneError

    if isinstance(try_to_load_from_cache("llm-blender/PairRM-hf", "config.json"), str):
        pytest.skip("PairRM-hf is in the local Hugging Face cache, so there is no offline error to check")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DytuneError, match=r"PairRM judge 'llm-blender/PairRM-hf' is not in the local .* --judge PATH"):
        make_judge("pairrm")


def test_single_order_gives_trls_pairrm_verdicts(tmp_path, tiny_pairrm_dir, questions_file, questions, make_answers):
    """`single_order` is what the study's `PairRMJudge().judge(prompts, [[vanilla, dyt], ...])` returned: llm-blender's
    `rank` fills the 2 x 2 comparison matrix with both orders, scores it with `get_scores_from_cmps` and ranks it;
    TRL's verdict is `rank[0] - 1` (0: the first completion preferred). Turn 1 only, with the turn-1 question."""
    _import_reference()
    import numpy as np
    from llm_blender.gpt_eval.utils import get_ranks_from_scores, get_scores_from_cmps

    judge = make_judge(str(tiny_pairrm_dir), batch_size=4)
    a_turns = {q["question_id"]: [f"{q['turns'][0]} hello world" * (1 + q["question_id"] % 3), "x"]
               for q in questions}
    b_turns = {q["question_id"]: ["the capital of France is Paris " * (1 + q["question_id"] % 2), "y"]
               for q in questions}
    a = make_answers(tmp_path / "a.jsonl", "vanilla", a_turns)
    b = make_answers(tmp_path / "b.jsonl", "dyt", b_turns)
    result = judge_answers(a, b, judge=judge, questions_path=questions_file, n_boot=50, single_order=True)

    prompts = [q["turns"][0] for q in questions]
    first = [a_turns[q["question_id"]][0] for q in questions]
    second = [b_turns[q["question_id"]][0] for q in questions]
    cmps = np.zeros((len(prompts), 2, 2))
    cmps[:, 0, 1] = judge.compare(prompts, first, second)
    cmps[:, 1, 0] = judge.compare(prompts, second, first)
    trl = get_ranks_from_scores(get_scores_from_cmps(cmps))[:, 0] - 1  # 0: vanilla (A) preferred
    ours = {c["question_id"]: c["outcome"] for c in result["comparisons"]}
    assert [ours[q["question_id"]] for q in questions] == ["win" if r == 0 else "loss" for r in trl]
    assert {c["turn"] for c in result["comparisons"]} == {1} and result["protocol"] == "study-single-order"
    assert result["summary"]["overall"]["tie"] == 0 and result["summary"]["overall"]["n"] == len(questions)
    assert "turn 1 only, one forced verdict per question" in result["markdown"]


def test_judge_cli_single_order(tmp_path, tiny_pairrm_dir, questions_file, questions, make_answers, capsys):
    from dytune.cli import main

    a = make_answers(tmp_path / "a.jsonl", "a", {q["question_id"]: ["hello world", "good"] for q in questions})
    b = make_answers(tmp_path / "b.jsonl", "b", {q["question_id"]: ["Paris", "answer"] for q in questions})
    assert main(["judge", str(a), str(b), "--judge", str(tiny_pairrm_dir), "--questions", str(questions_file),
                 "--single-order", "--bootstrap", "20", "--out", str(tmp_path / "j")]) == 0
    saved = json.loads((tmp_path / "j.json").read_text())
    assert saved["protocol"] == "study-single-order" and len(saved["comparisons"]) == len(questions)
    assert "original study's PairRM protocol" in capsys.readouterr().out
