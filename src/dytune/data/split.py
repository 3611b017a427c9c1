"""Train/validation split at conversation level.

ShareGPT splits long chats into chunks with ids `<conv>_0`, `<conv>_1`, ...; chunks of one chat must not
land on both sides, or validation measures memorised text. Ids are grouped by what is left after removing
a weight-copy suffix (`#k`) and a chunk suffix (`_N`). A prefix shared by more than `chunk_limit` records is
a naming scheme, not one chat (FastChat's sample names its 500 conversations `identity_0` ... `identity_499`;
the longest real ShareGPT V3 chat has 89 chunks), so those records are split one by one.

Groups are shuffled with `seed` after sorting, so the split depends on the ids only (not on row order), and
validation gets whole groups until it holds `round(val_fraction * n)` conversations (at least one).
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from typing import Any

from dytune.errors import DytuneError

_CHUNK = re.compile(r"_\d+$")


def conversation_key(cid: str) -> str:
    """The conversation an id belongs to: `abc_3#1` -> `abc`."""
    return _CHUNK.sub("", cid.split("#", 1)[0])


def split_train_val(convs: Any, val_fraction: float = 0.05, seed: int = 0, *, chunk_limit: int = 256
                    ) -> tuple[Any, Any]:
    """Split a conversations dataset into (train, validation) with no conversation on both sides."""
    if not 0 <= val_fraction < 1:
        raise DytuneError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(convs)
    if val_fraction == 0 or n == 0:
        return convs, convs.select([])
    ids = convs["id"]
    keys = [conversation_key(i) for i in ids]
    sizes = Counter(keys)
    keys = [k if sizes[k] <= chunk_limit else ids[i].split("#", 1)[0] for i, k in enumerate(keys)]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    if len(groups) < 2:
        raise DytuneError(f"cannot split {n} records into train and validation: they are all chunks of one "
                          "conversation. Pass a separate validation source (val_source) or val_fraction=0")
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    target = max(1, round(val_fraction * n))
    val_idx: list[int] = []
    for key in order:
        if len(val_idx) >= target:
            break
        if len(val_idx) + len(groups[key]) > n - 1:  # leave at least one group for training
            continue
        val_idx.extend(groups[key])
    val_set = set(val_idx)
    train_idx = [i for i in range(n) if i not in val_set]
    return convs.select(train_idx), convs.select(sorted(val_idx))
