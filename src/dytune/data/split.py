"""Train/validation split at conversation level.

ShareGPT splits long chats into chunks with ids `<conv>_0`, `<conv>_1`, ...; chunks of one chat must not
land on both sides, or validation measures memorised text. Ids are grouped by what is left after removing
a weight-copy suffix (`#k`) and a chunk suffix (`_N`); the longest real ShareGPT V3 chat has 89 chunks.

Validation gets whole groups, in a seeded random order of the sorted group names (so the split depends on
the ids only, not on row order), until it holds `round(val_fraction * n)` conversations (at least one). It
takes only groups of at most a quarter of that target: a bigger group stays in training, which never leaks
and keeps one long chat from dominating validation. When such groups cannot fill the target, the shared
prefixes are a naming scheme, not chunks (FastChat's sample names 500 separate conversations `identity_0`
... `identity_499`), and the records are split one by one (with a note in the report).

`method="rows"` is `datasets.Dataset.train_test_split(test_size=val_fraction, seed=seed)` instead, the split the
original DyT study's notebooks made: a seeded permutation of the rows, ceil(fraction x n) of them held out, no
grouping (so the same rows as the study's whenever the same rows come in the same order).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from typing import Any

from dytune.errors import DytuneError

_CHUNK = re.compile(r"_\d+$")


def conversation_key(cid: str) -> str:
    """The conversation an id belongs to: `abc_3#1` -> `abc`."""
    return _CHUNK.sub("", cid.split("#", 1)[0])


def _pick(groups: dict[str, list[int]], target: int, seed: int) -> list[int] | None:
    """Validation rows from whole groups, or None when the placeable groups cannot reach `target`."""
    limit = max(1, target // 4)
    order = sorted(k for k, rows in groups.items() if len(rows) <= limit)
    if sum(len(groups[k]) for k in order) < target:
        return None
    random.Random(seed).shuffle(order)
    chosen: list[int] = []
    for key in order:
        if len(chosen) >= target:
            break
        chosen.extend(groups[key])
    return chosen


SPLIT_METHODS = ("conversation", "rows")


def split_train_val(convs: Any, val_fraction: float = 0.05, seed: int = 0, *, report: Any = None,
                    method: str = "conversation") -> tuple[Any, Any]:
    """Split a conversations dataset into (train, validation) with no conversation on both sides (or, with
    `method="rows"`, as `datasets`' train_test_split does)."""
    if not 0 <= val_fraction < 1:
        raise DytuneError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if method not in SPLIT_METHODS:
        raise DytuneError(f"the validation split method must be one of {', '.join(SPLIT_METHODS)}, got {method!r}")
    n = len(convs)
    if val_fraction == 0 or n == 0:
        return convs, convs.select([])
    if method == "rows":
        if n < 2:
            raise DytuneError("cannot split a single conversation into train and validation: pass val_fraction=0")
        parts = convs.train_test_split(test_size=val_fraction, seed=seed)
        return parts["train"], parts["test"]
    if n < 2:
        raise DytuneError("cannot split a single conversation into train and validation: pass val_fraction=0")
    ids = convs["id"]
    target = max(1, round(val_fraction * n))
    groups: dict[str, list[int]] = defaultdict(list)
    for i, cid in enumerate(ids):
        groups[conversation_key(cid)].append(i)
    val_idx = _pick(groups, target, seed)
    if val_idx is None:
        singles: dict[str, list[int]] = defaultdict(list)
        for i, cid in enumerate(ids):
            singles[cid.split("#", 1)[0]].append(i)  # weight copies still travel with their original
        val_idx = _pick(singles, target, seed)
        if val_idx is None:
            raise DytuneError(f"cannot hold out {target} of {n} conversations without splitting one: pass a "
                              "separate validation source (val_source) or a smaller val_fraction")
        if report is not None:
            report.note(f"ids share `_N` prefixes too widely to be ShareGPT chunks ({len(groups)} prefixes for {n} "
                        "records): split record by record")
    val_set = set(val_idx)
    train_idx = [i for i in range(n) if i not in val_set]
    return convs.select(train_idx), convs.select(sorted(val_idx))
