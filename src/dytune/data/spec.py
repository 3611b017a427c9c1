"""`DataSpec`: everything that decides the training data, as one dataclass a training config can embed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dytune.errors import DytuneError


@dataclass
class DataSpec:
    """Where the data comes from and how it becomes training examples.

    `source`/`val_source`: a path, glob, folder or Hub id, `path:weight`, or a list of them; a list entry may
    be a mapping with settings of its own (a data mix: see `dytune.data.load`). Without `val_source`,
    `val_fraction` of the conversations (whole ShareGPT chats, never chunks of one on both sides) is held out.
    The other fields are the arguments of `load_conversations` and `tokenize_conversations` of the same names
    (`turns: first` keeps the first user and assistant turn; `mask_eos` takes EOS out of the loss). The
    chat template used is stored in the tokenizer that `prepare` tokenizes with, so a model saved with that
    tokenizer is prompted the way it was trained.
    """

    source: str | list | dict = ""
    format: str | None = None
    max_samples: int | None = None
    val_fraction: float = 0.05
    val_method: str = "conversation"  # or "rows": datasets' train_test_split, as the original study (split.py)
    val_source: str | list | dict | None = None
    max_length: int = 1024
    train_on: str = "assistant"
    chat_template: str | None = None
    mask_eos: bool = False
    turns: str = "all"
    clean: bool = False
    seed: int = 0
    field_map: dict[str, Any] | None = None
    role_map: dict[str, Any] | None = None
    split: str = "train"
    val_split: str | None = None  # split of val_source (default: `split`)
    revision: str | None = None
    streaming: bool = False
    packing: bool = False
    num_proc: int = 1
    cache_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # passed to load_conversations (data_files, ...)

    def __post_init__(self) -> None:
        from dytune.data.formats import TURNS
        from dytune.data.split import SPLIT_METHODS

        if self.val_method not in SPLIT_METHODS:
            raise DytuneError(f"data.val_method must be one of {', '.join(SPLIT_METHODS)}, got {self.val_method!r}")
        if self.turns not in TURNS:
            raise DytuneError(f"data.turns must be one of {', '.join(TURNS)}, got {self.turns!r}")
        if self.train_on not in ("assistant", "all"):
            raise DytuneError(f"data.train_on must be 'assistant' or 'all', got {self.train_on!r}")
        if not 0 <= self.val_fraction < 1:
            raise DytuneError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.max_length < 2:
            raise DytuneError(f"data.max_length must be at least 2, got {self.max_length}")
        if self.max_samples is not None and self.max_samples <= 0:
            raise DytuneError(f"data.max_samples must be positive (or null for all), got {self.max_samples}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataSpec:
        """Build from a config mapping; an unknown key is an error, not silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DytuneError(f"unknown data setting(s) {unknown}: valid keys are {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _load_kwargs(self, split: str) -> dict[str, Any]:
        return dict(format=self.format, seed=self.seed, field_map=self.field_map, role_map=self.role_map,
                    clean=self.clean, split=split, revision=self.revision, streaming=self.streaming,
                    turns=self.turns, **self.extra)

    def load(self):
        """`(conversations, report)` for `source` (max_samples applied)."""
        from dytune.data.load import load_conversations

        if not self.source:
            raise DytuneError("data.source is empty: give a file, folder, glob or Hub dataset id")
        return load_conversations(self.source, max_samples=self.max_samples, **self._load_kwargs(self.split))

    def load_splits(self):
        """`(train, val, report)` conversations: a held-out fraction, or `val_source`."""
        from dytune.data.load import load_conversations
        from dytune.data.split import split_train_val

        convs, report = self.load()
        if self.val_source is None:
            train, val = split_train_val(convs, self.val_fraction, self.seed, report=report, method=self.val_method)
            return train, val, report
        val, val_report = load_conversations(self.val_source, **self._load_kwargs(self.val_split or self.split))
        for src in val_report.sources:
            src.source = f"validation: {src.source}"
        report.sources.extend(val_report.sources)
        # exact ids (a weight copy `x#1` counts as `x`): prefixes are no proof of chunking across files
        held = {i.split("#", 1)[0] for i in val["id"]}
        overlap = [i for i, cid in enumerate(convs["id"]) if cid.split("#", 1)[0] in held]
        if overlap:
            drop = set(overlap)
            convs = convs.select([i for i in range(len(convs)) if i not in drop])
            report.note(f"removed {len(overlap)} training conversations whose id is also in the validation source")
        report.selected = len(convs) + len(val)
        report.turns += val_report.turns
        return convs, val, report

    def prepare(self, tokenizer: Any):
        """`(train_tokens, val_tokens, report)`: load, split and tokenize, ready for a trainer."""
        from dytune.data.templates import resolve_template
        from dytune.data.tokenize import tokenize_conversations

        train, val, report = self.load_splits()
        kwargs = dict(max_length=self.max_length, train_on=self.train_on, chat_template=self.chat_template,
                      packing=self.packing, num_proc=self.num_proc, report=report,
                      cache_dir=Path(self.cache_dir) if self.cache_dir else None, mask_eos=self.mask_eos)
        train_tok = tokenize_conversations(train, tokenizer, **kwargs)
        val_tok = tokenize_conversations(val, tokenizer, **kwargs) if len(val) else None
        template, origin = resolve_template(tokenizer, self.chat_template)
        if origin != "tokenizer":  # saved with the model: `dytune answer` then renders prompts as training did
            tokenizer.chat_template = template
        return train_tok, val_tok, report
