"""DataSpec: config validation and the load -> split -> tokenize path a trainer uses."""

from __future__ import annotations

import json

import pytest

from dytune.data import DataSpec
from dytune.errors import DytuneError


def test_from_dict_rejects_unknown_keys_and_bad_values():
    spec = DataSpec.from_dict({"source": "x.json", "max_length": 256, "clean": True})
    assert spec.to_dict()["max_length"] == 256 and spec.val_fraction == 0.05
    with pytest.raises(DytuneError, match=r"unknown data setting\(s\) \['max_len'\]"):
        DataSpec.from_dict({"source": "x.json", "max_len": 256})
    with pytest.raises(DytuneError, match="train_on"):
        DataSpec(source="x", train_on="everything")
    with pytest.raises(DytuneError, match="val_fraction"):
        DataSpec(source="x", val_fraction=1.5)
    with pytest.raises(DytuneError, match="data.source is empty"):
        DataSpec().load()


def test_prepare_splits_and_tokenizes(sharegpt_path, chat_tok):
    spec = DataSpec(source=str(sharegpt_path), max_samples=200, val_fraction=0.1, max_length=128)
    train, val, report = spec.prepare(chat_tok)
    assert len(train) + len(val) + report.dropped.get("no_trainable_tokens", 0) == 200
    assert 15 <= len(val) <= 20
    assert report.tokenized["examples"] == len(train) + len(val)
    assert set(train.column_names) == {"input_ids", "attention_mask", "labels"}


def test_separate_validation_source_removes_overlap(tmp_path, sharegpt_path, chat_tok):
    rows = json.loads(sharegpt_path.read_text())
    val_path = tmp_path / "val.json"
    val_path.write_text(json.dumps(rows[:30]))
    spec = DataSpec(source=str(sharegpt_path), val_source=str(val_path), max_length=256)
    train, val, report = spec.load_splits()
    assert len(val) == 30 and len(train) == 470
    assert not set(train["id"]) & set(val["id"])
    assert any("removed 30 training conversations" in n for n in report.notes)
    assert [s.source for s in report.sources][1].startswith("validation: ")
