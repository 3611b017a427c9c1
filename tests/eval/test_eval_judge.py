"""Pairwise judging: order swapping, statistics on cases with known answers, outputs and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dytune.cli import main
from dytune.errors import DytuneError
from dytune.eval.judge import judge_answers, make_judge
from dytune.eval.winrate import Verdict, bootstrap_win_rate, decide, summarize


class LengthJudge:
    """Pairwise toy judge: prefers the longer last answer, plus `bias` for whichever is shown first."""

    pairwise = True
    name = "length"

    def __init__(self, bias: float = 0.0) -> None:
        self.bias = bias
        self.calls = []

    def compare(self, sources, cands1, cands2):
        self.calls.append((list(sources), list(cands1), list(cands2)))
        return [len(a.split("<Response")[-1]) - len(b.split("<Response")[-1]) + self.bias
                for a, b in zip(cands1, cands2)]


def _answers(tmp_path, make_answers, questions, a_len, b_len):
    a = make_answers(tmp_path / "a.jsonl", "model-a", {q["question_id"]: ["x" * a_len] * 2 for q in questions})
    b = make_answers(tmp_path / "b.jsonl", "model-b", {q["question_id"]: ["y" * b_len] * 2 for q in questions})
    return a, b


def test_decide_needs_both_orders():
    assert decide(1.0, 2.0) == "win"
    assert decide(-1.0, -0.5) == "loss"
    assert decide(1.0, -1.0) == "tie"  # flips with the order: position bias
    assert decide(0.05, 0.05, tie_margin=0.1) == "tie"


def test_both_orders_are_judged_and_cancel_position_bias(tmp_path, questions_file, questions, make_answers):
    a, b = _answers(tmp_path, make_answers, questions, a_len=20, b_len=10)
    judge = LengthJudge(bias=0.0)
    result = judge_answers(a, b, judge=judge, questions_path=questions_file, n_boot=200)
    assert len(judge.calls) == 2  # A first, then B first
    (s1, a1, b1), (s2, a2, b2) = judge.calls
    assert s1 == s2 and a1 == b2 and b1 == a2  # same sources, candidates swapped
    assert len(a1) == 10  # 5 questions x 2 turns
    assert result["summary"]["overall"] == {"win": 10, "tie": 0, "loss": 0, "n": 10, "questions": 5,
                                            "win_rate": 1.0, "ci95": [1.0, 1.0]}

    # a judge that always prefers whichever answer it sees first: every verdict flips, so all ties
    biased = judge_answers(a, b, judge=LengthJudge(bias=100.0), questions_path=questions_file, n_boot=200)
    assert biased["summary"]["overall"]["tie"] == 10 and biased["summary"]["overall"]["win_rate"] == 0.5
    # bias smaller than the real difference: the real preference survives
    mild = judge_answers(a, b, judge=LengthJudge(bias=5.0), questions_path=questions_file, n_boot=200)
    assert mild["summary"]["overall"]["win"] == 10
    # and the mirror image
    reverse = judge_answers(b, a, judge=LengthJudge(bias=5.0), questions_path=questions_file, n_boot=200)
    assert reverse["summary"]["overall"]["loss"] == 10 and reverse["model_a"] == "model-b"


def test_turn_two_source_holds_the_conversation(tmp_path, questions_file, questions, make_answers):
    a, b = _answers(tmp_path, make_answers, questions, a_len=3, b_len=4)
    judge = LengthJudge()
    judge_answers(a, b, judge=judge, questions_path=questions_file, n_boot=10)
    sources, cands_a, _ = judge.calls[0]
    assert sources[0] == "Write a line." and cands_a[0] == "xxx"  # turn 1: the plain question
    assert "USER: Write a line." in sources[1] and "USER: Now shorter." in sources[1]  # turn 2: both questions
    assert cands_a[1] == "<Response 1>: xxx\n<Response 2>: xxx"  # and the model's own turn-1 answer


def test_win_rate_and_bootstrap_on_known_cases():
    def v(qid, turn, outcome, cat="c"):
        return Verdict(qid, cat, turn, outcome, 0.0, 0.0)

    # every question: turn 1 won, turn 2 lost -> each question scores exactly 0.5, so resampling whole
    # questions gives no spread at all (resampling single comparisons would)
    paired = [v(q, 1, "win") for q in range(20)] + [v(q, 2, "loss") for q in range(20)]
    assert bootstrap_win_rate(paired, n_boot=500) == (0.5, 0.5)
    summary = summarize(paired, n_boot=500)
    assert summary["per_turn"]["1"]["win_rate"] == 1.0 and summary["per_turn"]["2"]["win_rate"] == 0.0
    assert summary["overall"]["win_rate"] == 0.5

    # 30 wins, 10 ties, 10 losses over 50 questions: rate 0.7, a sensible interval around it
    mixed = [v(q, 1, "win") for q in range(30)] + [v(q, 1, "tie") for q in range(30, 40)] + \
        [v(q, 1, "loss") for q in range(40, 50)]
    t = summarize(mixed, n_boot=2000, seed=1)["overall"]
    assert (t["win"], t["tie"], t["loss"], t["n"]) == (30, 10, 10, 50)
    assert t["win_rate"] == pytest.approx(0.7)
    low, high = t["ci95"]
    assert 0.55 < low < 0.7 < high < 0.85
    # the normal approximation of the same interval: sd of per-question points / sqrt(n)
    points = np.array([1.0] * 30 + [0.5] * 10 + [0.0] * 10)
    half = 1.96 * points.std() / np.sqrt(50)
    assert low == pytest.approx(0.7 - half, abs=0.03) and high == pytest.approx(0.7 + half, abs=0.03)


def test_per_category_tallies(tmp_path, questions_file, questions, make_answers):
    # A longer on writing, shorter on math and stem
    a = make_answers(tmp_path / "a.jsonl", "a", {q["question_id"]: ["x" * (30 if q["category"] == "writing" else 5)] * 2
                                                 for q in questions})
    b = make_answers(tmp_path / "b.jsonl", "b", {q["question_id"]: ["y" * 10] * 2 for q in questions})
    s = judge_answers(a, b, judge=LengthJudge(), questions_path=questions_file, n_boot=100)["summary"]
    assert s["per_category"]["writing"]["win"] == 4 and s["per_category"]["math"]["loss"] == 4
    assert s["per_category"]["stem"]["loss"] == 2
    assert s["overall"]["win_rate"] == pytest.approx(0.4)


def test_reward_model_judge_cli_writes_outputs(tmp_path, questions_file, questions, tiny_reward_dir, make_answers):
    a = make_answers(tmp_path / "a.jsonl", "dyt", {q["question_id"]: ["hello world", "a good answer"] for q in questions})
    b = make_answers(tmp_path / "b.jsonl", "ln", {q["question_id"]: ["Paris", "the capital"] for q in questions})
    out = tmp_path / "res" / "cmp"
    assert main(["judge", str(a), str(b), "--judge", str(tiny_reward_dir), "--questions", str(questions_file),
                 "--out", str(out), "--bootstrap", "300"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["judge"] == tiny_reward_dir.name and data["both_orders"] is False
    assert data["model_a"] == "dyt" and data["model_b"] == "ln"
    assert len(data["comparisons"]) == 10
    for c in data["comparisons"]:
        assert c["margin_ab"] == pytest.approx(c["score_a"] - c["score_b"])  # pointwise: order-free
    assert out.with_suffix(".png").stat().st_size > 5000
    md = out.with_suffix(".md").read_text()
    assert "| **all** |" in md and "| turn 2 |" in md and "| math |" in md
    assert "each answer scored on its own" in md

    # the same answers against themselves: every comparison is a tie
    same = judge_answers(a, a, judge=make_judge(str(tiny_reward_dir)), questions_path=questions_file, n_boot=50)
    assert same["summary"]["overall"]["tie"] == 10 and same["model_a"] == "A:dyt"


def test_mismatched_question_sets_are_an_error(tmp_path, questions_file, questions, make_answers):
    a = make_answers(tmp_path / "a.jsonl", "a", {q["question_id"]: ["x", "y"] for q in questions})
    b = make_answers(tmp_path / "b.jsonl", "b", {q["question_id"]: ["x", "y"] for q in questions[:3]})
    with pytest.raises(DytuneError, match=r"2 question\(s\) answered in .*a.jsonl but not in .*b.jsonl: 4, 5"):
        judge_answers(a, b, judge=LengthJudge(), questions_path=questions_file)
    c = make_answers(tmp_path / "c.jsonl", "c", {**{q["question_id"]: ["x", "y"] for q in questions}, 99: ["x", "y"]})
    with pytest.raises(DytuneError, match=r"not in the questions file: 99"):
        judge_answers(a, c, judge=LengthJudge(), questions_path=questions_file)
    d = make_answers(tmp_path / "d.jsonl", "d", {q["question_id"]: ["only one turn"] for q in questions})
    with pytest.raises(DytuneError, match="only some turns"):
        judge_answers(a, d, judge=LengthJudge(), questions_path=questions_file)


def test_subset_of_questions_is_fine(tmp_path, questions_file, questions, make_answers):
    a = make_answers(tmp_path / "a.jsonl", "a", {q["question_id"]: ["xx", "xx"] for q in questions[:2]})
    b = make_answers(tmp_path / "b.jsonl", "b", {q["question_id"]: ["y", "y"] for q in questions[:2]})
    assert judge_answers(a, b, judge=LengthJudge(), questions_path=questions_file)["summary"]["overall"]["n"] == 4


def test_missing_and_empty_files(tmp_path, questions_file, questions, make_answers, capsys):
    a = make_answers(tmp_path / "a.jsonl", "a", {q["question_id"]: ["x", "y"] for q in questions})
    with pytest.raises(DytuneError, match="answers file not found: .*nope.jsonl"):
        judge_answers(a, tmp_path / "nope.jsonl", judge=LengthJudge(), questions_path=questions_file)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DytuneError, match="answers file .*empty.jsonl is empty"):
        judge_answers(a, tmp_path / "empty.jsonl", judge=LengthJudge(), questions_path=questions_file)
    (tmp_path / "bad.jsonl").write_text('{"question_id": 1, "choices": []}\n')
    with pytest.raises(DytuneError, match="not a FastChat model_answer record"):
        judge_answers(a, tmp_path / "bad.jsonl", judge=LengthJudge(), questions_path=questions_file)
    with pytest.raises(DytuneError, match="questions file not found"):
        judge_answers(a, a, judge=LengthJudge(), questions_path=tmp_path / "q.jsonl")
    with pytest.raises(DytuneError, match="judge 'no/such/judge' not found"):
        make_judge("no/such/judge")
    # empty answer strings are judged, with a warning that names them
    e = make_answers(tmp_path / "e.jsonl", "e", {q["question_id"]: ["", "y"] for q in questions})
    capsys.readouterr()
    judge_answers(a, e, judge=LengthJudge(), questions_path=questions_file, n_boot=10)
    assert "e.jsonl has 5 empty answer(s)" in capsys.readouterr().err


def test_cli_error_is_reported_without_traceback(tmp_path, questions_file, capsys):
    code = main(["judge", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--judge", "/no/such/dir",
                 "--questions", str(questions_file)])
    assert code == 2
    assert "dytune judge: error: judge '/no/such/dir' not found" in capsys.readouterr().err


def test_single_order_is_one_forced_turn_one_verdict(tmp_path, questions_file, questions, make_answers):
    """The study's protocol: both orders averaged into one verdict per question, turn 1 only, no ties, so a
    position bias larger than the real difference no longer turns verdicts into ties, it cancels in the mean."""
    a, b = _answers(tmp_path, make_answers, questions, a_len=20, b_len=10)
    judge = LengthJudge(bias=100.0)
    study = judge_answers(a, b, judge=judge, questions_path=questions_file, n_boot=50, single_order=True)
    assert [len(sources) for sources, _, _ in judge.calls] == [5, 5]  # turn 1 of 5 questions, in both orders
    assert study["summary"]["overall"] == {"win": 5, "tie": 0, "loss": 0, "n": 5, "questions": 5,
                                           "win_rate": 1.0, "ci95": [1.0, 1.0]}
    default = judge_answers(a, b, judge=LengthJudge(bias=100.0), questions_path=questions_file, n_boot=50)
    assert default["summary"]["overall"]["tie"] == 10  # dytune's protocol: every verdict flips, so ties


def test_concat_turns_answers_need_single_order(tmp_path, questions_file, questions):
    path = tmp_path / "concat.jsonl"
    path.write_text("".join(json.dumps({"question_id": q["question_id"], "model_id": "m", "generation":
                                        {"concat_turns": True}, "choices": [{"index": 0, "turns": ["one answer"]}]})
                            + "\n" for q in questions))
    with pytest.raises(DytuneError, match="judge it with --single-order"):
        judge_answers(path, path, judge=LengthJudge(), questions_path=questions_file)
    assert judge_answers(path, path, judge=LengthJudge(), questions_path=questions_file, n_boot=10,
                         single_order=True)["summary"]["overall"]["n"] == 5


def test_single_order_needs_a_pairwise_judge(tmp_path, questions_file, questions, make_answers):
    class Pointwise:
        pairwise, name = False, "reward"

    a, b = _answers(tmp_path, make_answers, questions, a_len=2, b_len=1)
    with pytest.raises(DytuneError, match="no order to choose"):
        judge_answers(a, b, judge=Pointwise(), questions_path=questions_file, single_order=True)
