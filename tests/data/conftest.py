"""Fixtures for the data tests: the shared real samples, tiny tokenizers, a Re-Wild-schema fixture."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"  # ../shared/data relative to the repository root


def shared_file(name: str) -> Path:
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"reference data {path} is absent (see ../shared/data/README.md)")
    return path


@pytest.fixture
def alpaca_path() -> Path:
    return shared_file("alpaca_sample.json")


@pytest.fixture
def sharegpt_path() -> Path:
    return shared_file("sharegpt_sample.json")


@pytest.fixture
def mtbench_path() -> Path:
    return shared_file("mt_bench_questions.jsonl")


@pytest.fixture(autouse=True)
def _private_token_cache(tmp_path, monkeypatch):
    """Keep the tokenized-data cache of each test in its own temporary folder."""
    monkeypatch.setattr("dytune.data.tokenize.default_cache_dir", lambda: tmp_path / "dytune-cache")


@pytest.fixture
def chat_tok():
    from dytune.testing import tiny_tokenizer

    return _fresh(tiny_tokenizer(chat_template=True))


@pytest.fixture
def base_tok():
    from dytune.testing import tiny_tokenizer

    return _fresh(tiny_tokenizer(chat_template=False))


def _fresh(tok):
    import copy

    return copy.deepcopy(tok)  # tiny_tokenizer is lru-cached: tests that add tokens must not leak them


def rewild_records() -> list[dict]:
    """Rows in the schema of nyu-dice-lab/wildchat50m-rewild-sft-385700 (WildChat conversations)."""
    def turn(role, content, i, **extra):
        base = {"content": content, "role": role, "country": "United States", "hashed_ip": f"h{i:04d}",
                "header": {"accept-language": "en-US", "user-agent": "Mozilla/5.0"}, "language": "English",
                "redacted": False, "state": "California", "timestamp": None, "toxic": False,
                "turn_identifier": 1000 + i}
        if role == "assistant":
            base.update(finish_reason="stop")
        base.update(extra)
        return base

    rows = []
    for i in range(12):
        conv = [turn("user", f"Question {i}: what is {i} + {i}?", 2 * i),
                turn("assistant", f"{i} + {i} = {2 * i}.", 2 * i + 1)]
        if i % 3 == 0:
            conv += [turn("user", "Explain it to a child.", 2 * i + 2),
                     turn("assistant", "Count the apples in both hands together.", 2 * i + 3)]
        rows.append({"conversation_hash": f"{i:032x}", "model": "Llama-3.3-70B-Instruct",
                     "timestamp": "2024-05-01T12:00:00", "conversation": conv, "turn": len(conv) // 2,
                     "language": "English", "toxic": False, "redacted": False, "state": "California",
                     "country": "United States", "hashed_ip": f"h{i:04d}",
                     "openai_moderation": [{"flagged": False}], "detoxify_moderation": [{"toxicity": 0.001}]})
    # WildChat also has unanswered prompts (empty assistant text)
    rows.append({**rows[0], "conversation_hash": "f" * 32,
                 "conversation": [turn("user", "Hello?", 98), turn("assistant", "", 99, finish_reason="length")]})
    return rows


@pytest.fixture
def rewild_rows() -> list[dict]:
    return rewild_records()


@pytest.fixture
def rewild_parquet(tmp_path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rewild" / "train-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rewild_records()), path)
    return path
