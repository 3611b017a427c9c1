"""Pairwise judging of two MT-bench answer files: which model answered better, turn by turn.

Judges (`make_judge`):
  * `pairrm` (default): PairRM, the study's judge (`dytune.eval.pairrm`, a port onto transformers).
    Pairwise, so every pair is judged in both orders; a verdict that flips with the order is a tie.
  * a local directory: any sequence-classification reward model (one output). It scores each answer in
    its conversation on its own (no position to be biased by); A's margin is score(A) - score(B).
  * `openai:MODEL`: FastChat single-answer 1-10 grades from an OpenAI-compatible server
    (`dytune.eval.openai_judge`); the margin is the difference of grades, plus MT-bench scores per model.

`judge_answers` returns the verdicts and a summary (`dytune.eval.winrate`) and writes JSON, Markdown and a
bar chart PNG.

`single_order=True` is the original DyT study's PairRM protocol (TRL's `PairRMJudge.judge`, which calls
llm-blender's `rank`): turn 1 only, with the turn-1 question as the prompt, and one forced verdict per question
from PairRM's two logits averaged (llm-blender's `max_logits` score: (logit(A, B) - logit(B, A)) / 2 > 0 means
A), so a pair whose verdict flips with the order still gets a winner. dytune's default judges every turn and
calls such a pair a tie, because a verdict that follows the presentation order is position bias.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from dytune.errors import DytuneError
from dytune.eval.answers import answer_turns, check_same_questions, load_answers, load_questions, model_id_of
from dytune.eval.winrate import Verdict, bar_chart, decide, markdown, summarize


class RewardModelJudge:
    """Pointwise judge from a local `AutoModelForSequenceClassification` reward model (num_labels=1)."""

    pairwise = False

    def __init__(self, path: str, *, device: str | None = None, batch_size: int = 8,
                 max_length: int | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        location = Path(path)
        if not (location / "config.json").is_file():
            raise DytuneError(f"judge {path!r} is not a model directory (no config.json); use --judge pairrm, "
                              "--judge openai:MODEL or a local sequence-classification reward model directory")
        self.name = location.name
        self.tokenizer = AutoTokenizer.from_pretrained(location)
        self.model = AutoModelForSequenceClassification.from_pretrained(location, dtype=torch.float32).eval()
        if self.model.config.num_labels != 1:
            raise DytuneError(f"judge {path!r} has {self.model.config.num_labels} outputs; a reward model judge "
                              "needs exactly one score (num_labels=1)")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.truncation_side = "left"  # keep the answer being judged, drop the oldest context
        limit = getattr(self.model.config, "max_position_embeddings", None) or 512
        self.max_length = min(max_length or limit, limit, self.tokenizer.model_max_length or limit)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.batch_size = batch_size

    def text(self, question: dict, answers: list[str], turn: int) -> str:
        messages = []
        for q, a in zip(question["turns"][:turn], answers[:turn]):
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n\n".join(f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages)

    @torch.no_grad()
    def score(self, items: list[tuple[dict, list[str], int]]) -> list[dict]:
        texts = [self.text(*item) for item in items]
        scores: list[dict] = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            logits = self.model(**enc).logits[:, 0].float().cpu()
            scores.extend({"score": float(s)} for s in logits)
        return scores


def make_judge(spec: str, *, device: str | None = None, batch_size: int = 8):
    """`pairrm`, `pairrm:PATH_OR_HUB_ID`, `openai:MODEL`, or a local reward model directory."""
    if spec == "pairrm" or spec.startswith("pairrm:"):
        from dytune.eval.pairrm import PAIRRM_HUB_ID, PairRMJudge

        return PairRMJudge(spec.partition(":")[2] or PAIRRM_HUB_ID, device=device, batch_size=batch_size)
    if spec.startswith("openai:"):
        from dytune.eval.openai_judge import OpenAIJudge

        return OpenAIJudge(spec.partition(":")[2])
    path = Path(spec).expanduser()
    if not path.exists():
        raise DytuneError(f"judge {spec!r} not found: use pairrm, openai:MODEL, or the path of a local reward model "
                          "directory")
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    if "cand1_prefix_id" in config:  # a PairRM checkpoint in PairRM-hf's layout
        from dytune.eval.pairrm import PairRMJudge

        return PairRMJudge(str(path), device=device, batch_size=batch_size)
    return RewardModelJudge(str(path), device=device, batch_size=batch_size)


def _pairwise_margins(judge, questions, turns_a, turns_b) -> list[dict]:
    """Each (question, turn) judged with A first and with B first."""
    from dytune.eval.pairrm import conversation_pair

    keys, sources, cands_a, cands_b = [], [], [], []
    for q in questions:
        qid = q["question_id"]
        for t in range(1, len(q["turns"]) + 1):
            source, a, b = conversation_pair(q["turns"][:t], turns_a[qid][:t], turns_b[qid][:t])
            keys.append((q, t))
            sources.append(source)
            cands_a.append(a)
            cands_b.append(b)
    ab = judge.compare(sources, cands_a, cands_b)  # > 0: A (shown first) better
    ba = judge.compare(sources, cands_b, cands_a)  # > 0: B (shown first) better
    return [{"q": q, "turn": t, "margin_ab": x, "margin_ba": -y} for (q, t), x, y in zip(keys, ab, ba)]


def _study_margins(judge, questions, turns_a, turns_b) -> list[dict]:
    """`single_order` (questions cut to turn 1): one forced verdict from the mean of both orders' margins."""
    rows = _pairwise_margins(judge, questions, turns_a, turns_b)
    for row in rows:
        row["score"] = (row["margin_ab"] + row["margin_ba"]) / 2  # llm-blender's max_logits score of A
    return rows


_BOTH_ORDERS = "both answer orders judged, a verdict that flips with the order counts as a tie"
_STUDY_PROTOCOL = ("the original study's PairRM protocol: turn 1 only, one forced verdict per question from the mean "
                   "of both orders' PairRM logits (no ties)")


def _pointwise_margins(judge, questions, turns_a, turns_b) -> tuple[list[dict], list[dict]]:
    items, keys = [], []
    for q in questions:
        for t in range(1, len(q["turns"]) + 1):
            keys.append((q, t))
            items.append((q, turns_a[q["question_id"]], t))
            items.append((q, turns_b[q["question_id"]], t))
    scored = judge.score(items)
    rows, dropped = [], []
    for k, (q, t) in enumerate(keys):
        sa, sb = scored[2 * k], scored[2 * k + 1]
        row = {"q": q, "turn": t, "score_a": sa["score"], "score_b": sb["score"]}
        if "judgment" in sa:
            row.update(judgment_a=sa["judgment"], judgment_b=sb["judgment"])
        if judge.name.startswith("openai:") and (sa["score"] < 0 or sb["score"] < 0):
            dropped.append(row)  # no rating could be parsed: leave the pair out
            continue
        margin = sa["score"] - sb["score"]  # position-free: the same in both orders
        rows.append({**row, "margin_ab": margin, "margin_ba": margin})
    return rows, dropped


def _mtbench_scores(rows: list[dict]) -> dict:
    """Mean 1-10 grade per model: overall, per turn, per category (openai judge only)."""
    out = {}
    for side in ("a", "b"):
        def mean(sel):
            vals = [r[f"score_{side}"] for r in rows if sel(r)]
            return round(sum(vals) / len(vals), 3) if vals else None
        out[side] = {"overall": mean(lambda r: True),
                     "per_turn": {str(t): mean(lambda r, t=t: r["turn"] == t) for t in sorted({r["turn"] for r in rows})},
                     "per_category": {c: mean(lambda r, c=c: r["q"]["category"] == c)
                                      for c in sorted({r["q"]["category"] for r in rows})}}
    return out


def judge_answers(answers_a: str | Path, answers_b: str | Path, *, judge, questions_path: str | Path | None = None,
                  out_prefix: str | Path | None = None, n_boot: int = 2000, seed: int = 0,
                  tie_margin: float = 0.0, single_order: bool = False) -> dict:
    """Judge A against B on every answered (question, turn); write `<prefix>.json/.md/.png`; return the result.

    `single_order`: the study's protocol (module docstring)."""
    if single_order and not judge.pairwise:
        raise DytuneError(f"--single-order is the study's PairRM protocol; the {judge.name} judge scores each answer "
                          "on its own, so there is no order to choose: leave --single-order out")
    paths = {"a": Path(answers_a), "b": Path(answers_b)}
    questions = load_questions(questions_path)
    answers = {label: load_answers(p) for label, p in paths.items()}
    concat = [str(paths[k]) for k, ans in answers.items()
              if any((rec.get("generation") or {}).get("concat_turns") for rec in ans.values())]
    if concat and not single_order:
        raise DytuneError(f"{', '.join(concat)} holds one answer per question to both turns concatenated "
                          "(`dytune answer --concat-turns`): judge it with --single-order (turn 1, as the study did)")
    if single_order:
        questions = [{**q, "turns": q["turns"][:1]} for q in questions]
    questions = check_same_questions(questions, answers, paths)
    model_a = model_id_of(answers["a"], paths["a"].stem)
    model_b = model_id_of(answers["b"], paths["b"].stem)
    if model_a == model_b:
        model_a, model_b = f"A:{model_a}", f"B:{model_b}"
    turns = {label: {qid: answer_turns(rec) for qid, rec in ans.items()} for label, ans in answers.items()}
    for label, by_q in turns.items():
        empty = sorted((qid, t + 1) for qid, ts in by_q.items() for t, a in enumerate(ts) if not a.strip())
        if empty:
            print(f"warning: {paths[label]} has {len(empty)} empty answer(s) (question, turn): {empty[:8]}"
                  f"{' ...' if len(empty) > 8 else ''}; they are judged as they are", file=sys.stderr)

    if single_order:
        rows, dropped = _study_margins(judge, questions, turns["a"], turns["b"]), []
    elif judge.pairwise:
        rows, dropped = _pairwise_margins(judge, questions, turns["a"], turns["b"]), []
    else:
        rows, dropped = _pointwise_margins(judge, questions, turns["a"], turns["b"])
    if not rows:
        raise DytuneError("no comparison could be judged (the judge returned no usable score)")
    verdicts = [Verdict(r["q"]["question_id"], r["q"]["category"], r["turn"],
                        decide(r["score"], r["score"], tie_margin) if single_order else
                        decide(r["margin_ab"], r["margin_ba"], tie_margin), float(r["margin_ab"]),
                        float(r["margin_ba"])) for r in rows]
    summary = summarize(verdicts, n_boot=n_boot, seed=seed)
    records = []
    for r, v in zip(rows, verdicts):
        extra = {k: r[k] for k in ("score_a", "score_b", "judgment_a", "judgment_b") if k in r}
        records.append({**v.to_dict(), **extra})
    result = {
        "model_a": model_a, "model_b": model_b, "judge": judge.name,
        "answers_a": str(paths["a"]), "answers_b": str(paths["b"]),
        "both_orders": bool(judge.pairwise), "protocol": "study-single-order" if single_order else "dytune",
        "tie_margin": tie_margin, "bootstrap": {"n": n_boot, "seed": seed},
        "summary": summary, "unjudged": len(dropped), "comparisons": records,
    }
    if not judge.pairwise and judge.name.startswith("openai:"):
        result["mtbench_scores"] = {model_a: (s := _mtbench_scores(rows))["a"], model_b: s["b"]}
    text = markdown(summary, model_a, model_b, judge.name, both_orders=bool(judge.pairwise))
    if single_order:
        text = (text.replace(_BOTH_ORDERS, _STUDY_PROTOCOL) if _BOTH_ORDERS in text
                else f"Protocol: {_STUDY_PROTOCOL}.\n\n{text}")
    if "mtbench_scores" in result:
        text += "\nMT-bench single-answer grades (1-10, mean):\n\n| model | all | turn 1 | turn 2 |\n|---|---:|---:|---:|\n"
        for name, s in result["mtbench_scores"].items():
            text += f"| {name} | {s['overall']} | {s['per_turn'].get('1')} | {s['per_turn'].get('2')} |\n"
    result["markdown"] = text
    if out_prefix is not None:
        prefix = Path(out_prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{prefix}.json").write_text(json.dumps({k: v for k, v in result.items() if k != "markdown"},
                                                     indent=2, ensure_ascii=False) + "\n")
        Path(f"{prefix}.md").write_text(text)
        bar_chart(summary, model_a, model_b, judge.name, f"{prefix}.png")
        result["files"] = [f"{prefix}.json", f"{prefix}.md", f"{prefix}.png"]
    return result
