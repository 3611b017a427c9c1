"""Train/validation split at conversation level."""

from __future__ import annotations

import random

import pytest

from dytune.data import conversation_key, load_conversations, split_train_val
from dytune.errors import DytuneError


def _convs(ids):
    import datasets

    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    return datasets.Dataset.from_list([{"id": i, "messages": msgs} for i in ids])


def _chunked_ids(n_convs: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    ids = []
    for c in range(n_convs):
        ids += [f"conv{c:04d}_{k}" for k in range(rng.choice([1, 1, 1, 2, 3, 8]))]
    return ids


def test_conversation_key():
    assert conversation_key("QWJhYvA_12") == "QWJhYvA"
    assert conversation_key("QWJhYvA_3#1") == "QWJhYvA"
    assert conversation_key("alpaca_sample-7") == "alpaca_sample-7"
    assert conversation_key("plain") == "plain"


def test_chunks_of_one_conversation_never_land_on_both_sides():
    ids = _chunked_ids(400)
    train, val = split_train_val(_convs(ids), val_fraction=0.1, seed=0)
    train_keys = {conversation_key(i) for i in train["id"]}
    val_keys = {conversation_key(i) for i in val["id"]}
    assert not train_keys & val_keys
    assert len(train) + len(val) == len(ids)
    target = round(0.1 * len(ids))
    assert target <= len(val) < target + 8  # whole groups: at most one group (8 chunks) over

    big = ["long_%d" % k for k in range(30)] + [f"s{i}" for i in range(200)]
    _, val = split_train_val(_convs(big), 0.05)  # 30 chunks > a quarter of the 12 held out: stays in train
    assert not any(i.startswith("long_") for i in val["id"]) and len(val) == 12


def test_split_is_deterministic_and_independent_of_row_order():
    ids = _chunked_ids(300, seed=1)
    _, val = split_train_val(_convs(ids), 0.05, seed=7)
    shuffled = ids[:]
    random.Random(3).shuffle(shuffled)
    _, val2 = split_train_val(_convs(shuffled), 0.05, seed=7)
    assert sorted(val["id"]) == sorted(val2["id"])
    _, other = split_train_val(_convs(ids), 0.05, seed=8)
    assert sorted(other["id"]) != sorted(val["id"])


def test_naming_scheme_prefixes_are_not_one_conversation(sharegpt_path):
    """FastChat's sample names 500 separate conversations identity_0..identity_499."""
    convs, _ = load_conversations(str(sharegpt_path))
    train, val = split_train_val(convs, 0.05, seed=0)
    assert (len(train), len(val)) == (475, 25)
    assert not set(train["id"]) & set(val["id"])


def test_weight_copies_stay_with_their_original():
    ids = [f"c{i}" for i in range(40)] + [f"c{i}#1" for i in range(40)]
    train, val = split_train_val(_convs(ids), 0.1, seed=0)
    assert {i.split("#")[0] for i in val["id"]}.isdisjoint({i.split("#")[0] for i in train["id"]})
    assert len(val) == 8


def test_edge_cases():
    convs = _convs([f"a{i}" for i in range(10)])
    train, val = split_train_val(convs, 0.0)
    assert len(train) == 10 and len(val) == 0
    train, val = split_train_val(convs, 0.01)
    assert len(val) == 1  # at least one
    # one prefix for everything: a naming scheme, split record by record (noted)
    from dytune.data import DataReport

    report = DataReport()
    train, val = split_train_val(_convs([f"x_{k}" for k in range(5)]), 0.2, report=report)
    assert (len(train), len(val)) == (4, 1) and "record by record" in report.notes[0]
    with pytest.raises(DytuneError, match="without splitting one"):
        split_train_val(_convs(["a", "a#1", "a#2", "b", "b#1", "b#2"]), 0.2)  # copies travel together
    with pytest.raises(DytuneError, match=r"val_fraction must be in \[0, 1\)"):
        split_train_val(convs, 1.0)
