"""Shared by the study tests: where the study configs are, and small local stand-ins for the RE-WILD rebuild's
three Hub sources, each in its source's own format (the fixtures are in conftest.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
STUDY = REPO / "configs" / "study"
SHARED = REPO.parent / "shared" / "data"
WILDCHAT = "nyu-dice-lab/allenai_WildChat-1M-Full-Qwen_Qwen2.5-72B-Instruct"
MMLU = "cais/mmlu"
TULU = "allenai/tulu-3-sft-personas-algebra"
N_WILDCHAT, N_MMLU, N_TULU = 30, 8, 6


def study_config(name: str) -> dict:
    return yaml.safe_load((STUDY / f"{name}.yaml").read_text())


def _wildchat_turn(role: str, content: str, i: int) -> dict:
    """A turn of nyu-dice-lab/allenai_WildChat-1M-Full-Qwen_Qwen2.5-72B-Instruct (keys as the study printed them)."""
    return {"content": content, "content_token_ids": None, "country": None, "cumulative_logprob": None,
            "finish_reason": "stop" if role == "assistant" else None, "hashed_ip": f"{i:064x}" if role == "user"
            else None, "header": None, "language": None, "redacted": None, "role": role, "state": None,
            "timestamp": None, "toxic": False, "turn_identifier": None}


def wildchat_rows() -> list[dict]:
    rows = []
    for i in range(N_WILDCHAT):
        conv = [_wildchat_turn("user", f"WildChat question {i}: what is {i} plus {i}?", i),
                _wildchat_turn("assistant", f"{i} plus {i} is {2 * i}.", i)]
        if i % 4 == 0:  # later turns, which the study's mapq72 ignored
            conv += [_wildchat_turn("user", "And times two?", i), _wildchat_turn("assistant", f"{4 * i}.", i)]
        rows.append({"conversation_hash": f"{i:032x}", "conversation": conv, "model": "Qwen/Qwen2.5-72B-Instruct"})
    return rows


def mmlu_rows() -> list[dict]:
    """cais/mmlu `auxiliary_train` as the study loaded it: one `train` column holding the question."""
    return [{"train": {"answer": i % 4, "choices": [f"choice {k} of {i}" for k in "ABCD"],
                       "question": f"MMLU question {i}?", "subject": ""}} for i in range(N_MMLU)]


def tulu_rows() -> list[dict]:
    return [{"id": f"personas_math_{i}", "prompt": f"Algebra problem {i}: solve x + {i} = {2 * i}.",
             "messages": [{"content": f"Algebra problem {i}: solve x + {i} = {2 * i}.", "role": "user"},
                          {"content": f"x = {i}.", "role": "assistant"}]} for i in range(N_TULU)]


def write_parquet(folder: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "train-00000-of-00001.parquet")
    return folder


def localise(data: dict, standins: dict[str, str], rows: dict[int, int] | None = None) -> dict:
    """A config's data mapping with each Hub source replaced by its stand-in; `rows` rescales take/skip counts
    (e.g. {200000: 20}) so a selection meant for a million rows picks a few of 30."""
    rows = rows or {}
    data = copy.deepcopy(data)

    def swap(item):
        if isinstance(item, dict):
            item = dict(item)
            item["source"] = standins.get(item["source"], item["source"])
            for key in ("take", "skip"):
                if item.get(key) is not None:
                    item[key] = rows.get(item[key], item[key])
            return item
        return standins.get(item, item)

    for key in ("source", "val_source"):
        value = data.get(key)
        if value is not None:
            data[key] = [swap(v) for v in value] if isinstance(value, list) else swap(value)
    return data
