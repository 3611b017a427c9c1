"""Conversations -> `input_ids`, `attention_mask`, `labels` (-100 where no loss is taken).

Labels. With `train_on="assistant"` (default) the loss covers each assistant turn's text and the template's
end-of-turn marker after it (`<|im_end|>` for ChatML, EOS for the default template), nothing else. The
assistant spans are found in characters of the rendered text, then mapped to the tokens that overlap them
(the rule transformers uses for `return_assistant_tokens_mask`):
  * a template with `{% generation %}` markers: the marked spans (transformers' own tracker);
  * any other template (SmolLM2's ChatML has no markers, and TRL's `assistant_only_loss` then refuses all but
    the templates it ships patched copies of): prefix renders. For assistant turn i, the text rendered for
    messages[:i] with the generation prompt is where the answer starts, and the text rendered for
    messages[:i+1] (trailing whitespace excluded) is where it ends. Both must be prefixes of the whole
    rendering; a template for which they are not (one that rewrites earlier turns) falls back to locating
    the turn's text in the rendering. A template that ignores `add_generation_prompt` gets its span started
    at the turn's text, so the role header is not trained.
With `train_on="all"` every token is trained. A `text`-format document (one assistant message, no user) is
tokenized as raw text + EOS, every token trained. `mask_eos=True` then takes every EOS token out of the loss,
as a collator that pads with EOS (`pad_token = eos_token`, the original DyT study's set-up) does: the model is
never taught to stop.

Truncation keeps the first `max_length` tokens; an example left with no trainable token is dropped and
counted (`no_trainable_tokens`), as is one the template refuses (`template_error`). Texts far longer than
`max_length` are tokenized only up to a special token past the point where `max_length` tokens surely end,
which gives the same first tokens (text is split at special tokens before BPE) without tokenizing what
truncation throws away.

Packing (`packing=True`) uses TRL's best-fit-decreasing `pack_dataset` and adds `seq_lengths` and
`position_ids` (restarting per conversation) so attention can stay within each conversation.

Results are cached under `cache_dir` (default `$DYTUNE_CACHE/data`, `cache_dir=False` turns it off), keyed by
a hash of the conversations' Arrow buffers, the tokenizer, the template and the options: a re-run loads the
saved dataset instead of tokenizing again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dytune._hub import cache_root
from dytune.data.report import DataReport
from dytune.data.templates import add_control_tokens, has_generation_markers, missing_control_tokens, \
    resolve_template
from dytune.errors import DytuneError

CACHE_VERSION = "1"  # bump when the tokenized output changes for the same inputs
CHARS_PER_TOKEN_BOUND = 8  # beyond max_length * this many chars, the text is surely past max_length tokens


class _TemplateError(Exception):
    pass


@dataclass
class _Renderer:
    """Renders conversations and finds the assistant character spans (picklable for num_proc > 1)."""

    template: str
    special: dict[str, Any]
    markers: bool
    _gen_prompt: bool | None = None  # does the template write a header for add_generation_prompt?

    def _compiled(self):
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template(self.template)  # lru-cached by transformers

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        try:
            return self._compiled().render(messages=messages, tools=None, documents=None,
                                           add_generation_prompt=add_generation_prompt, **self.special)
        except Exception as err:  # noqa: BLE001 - jinja TemplateError, raise_exception(), type errors
            raise _TemplateError(str(err)) from None

    def spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        if self.markers:
            from transformers.utils.chat_template_utils import render_jinja_template

            try:
                texts, indices = render_jinja_template([messages], chat_template=self.template,
                                                       return_assistant_tokens_mask=True, **self.special)
            except Exception as err:  # noqa: BLE001
                raise _TemplateError(str(err)) from None
            return texts[0], [tuple(s) for s in indices[0]]
        full = self.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            head = self.render(messages[:i], add_generation_prompt=True) if i else ""
            upto = full if i == len(messages) - 1 else self.render(messages[: i + 1])
            if not (full.startswith(upto) and upto.startswith(head)):
                return full, self._located_spans(messages, full)
            start, end = len(head), max(len(head), len(upto.rstrip()))
            if not self._honours_generation_prompt():  # the header is not in `head`: start at the text
                at = full.find(message["content"], start, end)
                start = at if at >= 0 else start
            spans.append((start, end))
        return full, spans

    def _honours_generation_prompt(self) -> bool:
        if self._gen_prompt is None:
            probe = [{"role": "user", "content": "x"}]
            self._gen_prompt = self.render(probe, True) != self.render(probe, False)
        return self._gen_prompt

    def _located_spans(self, messages: list[dict], full: str) -> list[tuple[int, int]]:
        """Fallback for templates that re-render earlier turns: find each turn's text in order."""
        probe = self.render([{"role": "user", "content": "\ue000"}, {"role": "assistant", "content": "\ue001"}])
        suffix = probe[probe.find("\ue001") + 1:].rstrip() if "\ue001" in probe else ""
        cursor, spans = 0, []
        for message in messages:
            at = full.find(message["content"], cursor)
            if at < 0:
                if message["role"] == "assistant":
                    raise _TemplateError("the template changes the assistant text, so its tokens cannot be found")
                continue
            cursor = at + len(message["content"])
            if message["role"] == "assistant":
                end = cursor + len(suffix) if suffix and full.startswith(suffix, cursor) else cursor
                spans.append((at, end))
                cursor = end
        return spans


def _token_range(enc: Any, start: int, end: int, n: int) -> tuple[int, int] | None:
    """Tokens overlapping chars [start, end): (first, last+1), or None."""
    first = None
    for pos in range(start, end):
        first = enc.char_to_token(pos)
        if first is not None:
            break
    if first is None:
        return None
    last = None
    for pos in range(end - 1, start - 1, -1):
        last = enc.char_to_token(pos)
        if last is not None:
            break
    # a character split over several byte-level tokens maps to the first of them: extend to all overlapping
    while first > 0 and (c := enc.token_to_chars(first - 1)) is not None and c[1] > start:
        first -= 1
    while last + 1 < n and (c := enc.token_to_chars(last + 1)) is not None and c[0] < end:
        last += 1
    return first, last + 1


@dataclass
class _Encoder:
    """The batched map function: render, tokenize, label, truncate."""

    tokenizer: Any
    renderer: _Renderer
    max_length: int
    train_on: str
    eos: str
    mask_id: int | None  # mask_eos: this token id (EOS) is never a label
    boundary: re.Pattern | None  # special tokens, which split the text before BPE
    cut_ok: bool  # the tokenizer adds nothing at the end of a sequence, so prefix tokenization is exact

    def _encode(self, texts: list[str], add_special: bool) -> list[Any]:
        if not texts:
            return []
        backend = self.tokenizer.backend_tokenizer
        if backend.truncation is None and backend.padding is None:
            # what tokenizer(texts) does, minus building Python lists of every id that we do not use
            return backend.encode_batch(texts, add_special_tokens=add_special)
        out = self.tokenizer(texts, add_special_tokens=add_special, return_attention_mask=False,
                             return_token_type_ids=False)
        return out.encodings

    def _encode_truncated(self, texts: list[str], add_special: bool) -> list[tuple[Any, bool]]:
        """Encodings covering at least the first max_length tokens of each text, and whether it was cut."""
        budget = self.max_length * CHARS_PER_TOKEN_BOUND
        cuts = []
        for text in texts:
            cut = None
            if self.cut_ok and self.boundary is not None and len(text) > budget:
                m = self.boundary.search(text, budget)
                if m and m.end() < len(text):
                    cut = m.end()
            cuts.append(cut)
        encs = self._encode([t[:c] if c else t for t, c in zip(texts, cuts)], add_special)
        redo = [i for i, (enc, c) in enumerate(zip(encs, cuts)) if c and len(enc.ids) < self.max_length]
        if redo:  # the cut came too early: tokenize the whole text
            for i, enc in zip(redo, self._encode([texts[i] for i in redo], add_special)):
                encs[i], cuts[i] = enc, None
        return [(enc, c is not None) for enc, c in zip(encs, cuts)]

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        n = len(batch["messages"])
        texts, spans, docs = [""] * n, [[] for _ in range(n)], [False] * n
        drop, detail = [""] * n, [""] * n
        for i, messages in enumerate(batch["messages"]):
            if len(messages) == 1 and messages[0]["role"] == "assistant":  # a plain `text` document
                texts[i], docs[i] = messages[0]["content"] + self.eos, True
                continue
            try:
                texts[i], spans[i] = self.renderer.spans(messages)
            except _TemplateError as err:
                drop[i], detail[i] = "template_error", str(err)[:200]
        out: dict[str, list] = {"input_ids": [None] * n, "labels": [None] * n, "_drop": drop,
                                "_truncated": [False] * n, "_detail": detail}
        for is_doc in (False, True):
            rows = [i for i in range(n) if docs[i] == is_doc and not drop[i]]
            # chat templates write their own BOS; raw documents get the tokenizer's usual special tokens
            for i, (enc, cut) in zip(rows, self._encode_truncated([texts[i] for i in rows], add_special=is_doc)):
                ids = enc.ids
                total = len(ids)
                ids = ids[: self.max_length]
                if is_doc or self.train_on == "all":
                    labels = list(ids)
                else:
                    labels = [-100] * len(ids)
                    for start, end in spans[i]:
                        r = _token_range(enc, start, end, total) if end > start else None
                        if r is None or r[0] >= len(ids):
                            continue
                        a, b = r[0], min(r[1], len(ids))
                        labels[a:b] = ids[a:b]
                if self.mask_id is not None:
                    labels = [-100 if t == self.mask_id else label for t, label in zip(ids, labels)]
                out["input_ids"][i], out["labels"][i] = ids, labels
                out["_truncated"][i] = cut or total > self.max_length
                if all(label == -100 for label in labels):
                    drop[i] = "no_trainable_tokens"
        for i in range(n):
            if out["input_ids"][i] is None:
                out["input_ids"][i], out["labels"][i] = [], []
        out["attention_mask"] = [[1] * len(ids) for ids in out["input_ids"]]
        return out


def _special_boundary(tokenizer: Any) -> re.Pattern | None:
    tokens = []
    for token in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(token, "special", False) and not getattr(token, "single_word", False) \
                and not getattr(token, "rstrip", False):
            tokens.append(str(token))
    pattern = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
    return re.compile(pattern) if pattern else None


def _adds_suffix_tokens(tokenizer: Any) -> bool:
    plain = tokenizer("a b", add_special_tokens=False)["input_ids"]
    full = tokenizer("a b", add_special_tokens=True)["input_ids"]
    return full[len(full) - len(plain):] != plain


# -- caching -----------------------------------------------------------------------------------------------
def content_fingerprint(dataset: Any) -> str:
    """Hash of a dataset's Arrow buffers and row selection: equal contents give equal fingerprints."""
    from dytune.data.load import table_fingerprint

    tables = [dataset.data.table]
    if getattr(dataset, "_indices", None) is not None:
        tables.append(dataset._indices.table)
    return table_fingerprint(*tables)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    h.update(type(tokenizer).__name__.encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def default_cache_dir() -> Path:
    return cache_root() / "data"


# -- public ------------------------------------------------------------------------------------------------
def tokenize_conversations(
    convs: Any,
    tokenizer: Any,
    *,
    max_length: int = 1024,
    train_on: Literal["assistant", "all"] = "assistant",
    chat_template: str | Path | None = None,
    packing: bool = False,
    num_proc: int = 1,
    cache_dir: str | Path | None | Literal[False] = None,
    report: DataReport | None = None,
    mask_eos: bool = False,
):
    """Tokenize a conversations dataset (from `load_conversations`) for causal-LM training.

    Returns a `datasets.Dataset` with `input_ids`, `attention_mask` and `labels` (-100 = no loss), plus
    `seq_lengths` and `position_ids` when packing. See the module docstring for the label rules (and
    `mask_eos`).
    `tokenizer` gains special tokens when the template needs some (see `templates.py`)."""
    import datasets

    if train_on not in ("assistant", "all"):
        raise DytuneError(f"train_on must be 'assistant' or 'all', got {train_on!r}")
    if max_length < 2:
        raise DytuneError(f"max_length must be at least 2, got {max_length}")
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise DytuneError(f"{type(tokenizer).__name__} is a slow (Python) tokenizer: label masking needs a fast "
                          "one (tokenizer.json); load it with AutoTokenizer.from_pretrained(..., use_fast=True)")
    if "messages" not in convs.column_names:
        raise DytuneError(f"expected a conversations dataset with a 'messages' column (from load_conversations), "
                          f"got columns {convs.column_names}")
    template, origin = resolve_template(tokenizer, chat_template)
    notes = [f"chat template: {origin}" + (" (built-in ### User/### Assistant template, see "
                                           "dytune.data.templates)" if origin == "default" else "")]
    missing = missing_control_tokens(template, tokenizer)
    if missing:
        notes.append(add_control_tokens(tokenizer, missing))
    markers = has_generation_markers(template)
    if train_on == "assistant":
        notes.append("labels: assistant turns from the template's {% generation %} markers" if markers else
                     "labels: assistant turns found by prefix rendering (template has no {% generation %} markers)")
    if mask_eos and tokenizer.eos_token_id is None:
        raise DytuneError("mask_eos needs a tokenizer with an EOS token")
    if mask_eos:
        notes.append("labels: every EOS token masked (mask_eos, as a collator padding with EOS does)")
    key = hashlib.sha256(json.dumps([CACHE_VERSION, content_fingerprint(convs), tokenizer_fingerprint(tokenizer),
                                     template, max_length, train_on, packing, mask_eos]).encode()).hexdigest()[:24]
    target = None
    if cache_dir is not False:
        target = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "tokenized" / key
        if (target / "dytune_stats.json").is_file():
            saved = json.loads((target / "dytune_stats.json").read_text())
            if report is not None:
                report.add_tokenized(saved["stats"], Counter(saved["dropped"]))
                for note in notes + [f"tokenized dataset loaded from cache {target}"]:
                    report.note(note)
            return datasets.load_from_disk(str(target))

    special = {k: v for k, v in tokenizer.special_tokens_map.items()}
    encoder = _Encoder(tokenizer=tokenizer, renderer=_Renderer(template, special, markers), max_length=max_length,
                       train_on=train_on, eos=tokenizer.eos_token or "",
                       mask_id=tokenizer.eos_token_id if mask_eos else None, boundary=_special_boundary(tokenizer),
                       cut_ok=not _adds_suffix_tokens(tokenizer))
    mapped = convs.map(encoder, batched=True, batch_size=256, remove_columns=convs.column_names,
                       num_proc=num_proc if num_proc and num_proc > 1 else None, desc="tokenizing")
    flags = mapped.select_columns(["_drop", "_detail", "_truncated"]).to_dict()
    keep = [i for i, d in enumerate(flags["_drop"]) if not d]
    dropped = Counter(d for d in flags["_drop"] if d)
    details = [d for d in flags["_detail"] if d][:3]
    result = mapped.remove_columns(["_drop", "_detail", "_truncated"])
    if dropped:
        result = result.select(keep).flatten_indices()
    tokens, trainable = _count_tokens(result)
    stats = {"examples": len(result), "tokens": tokens, "trainable_tokens": trainable,
             "truncated": sum(1 for i in keep if flags["_truncated"][i])}
    if packing:
        result = _pack(result, max_length, num_proc)
        stats["packed_sequences"] = len(result)
    if not len(result):
        raise DytuneError(f"no example is left to train on after tokenization (dropped: {dict(dropped)}"
                          + (f"; template said: {details[0]}" if details else "") + ")")
    if details:
        notes.append(f"template errors, e.g.: {details[0]}")
    if report is not None:
        report.add_tokenized(stats, dropped)
        for note in notes:
            report.note(note)
    if target is not None:
        result = _save(result, target, stats, dropped)
    return result


def _count_tokens(ds: Any) -> tuple[int, int]:
    """(tokens, trainable tokens) of a tokenized dataset, counted in Arrow."""
    import numpy as np
    import pyarrow.compute as pc

    tokens = trainable = 0
    for batch in ds.with_format("arrow").iter(batch_size=4096):
        flat = pc.list_flatten(batch["labels"]).to_numpy(zero_copy_only=False)
        tokens += len(flat)
        trainable += int(np.count_nonzero(flat != -100))
    return tokens, trainable


def _pack(ds: Any, max_length: int, num_proc: int) -> Any:
    from trl import pack_dataset

    packed = pack_dataset(ds.select_columns(["input_ids", "labels"]), max_length, strategy="bfd",
                          map_kwargs={"num_proc": num_proc if num_proc > 1 else None})

    def extra(batch):
        positions, masks = [], []
        for lengths, ids in zip(batch["seq_lengths"], batch["input_ids"]):
            positions.append([p for n in lengths for p in range(n)])
            masks.append([1] * len(ids))
        return {"position_ids": positions, "attention_mask": masks}

    return packed.map(extra, batched=True, desc="packing")


def _save(ds: Any, target: Path, stats: dict, dropped: Counter) -> Any:
    import datasets

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        ds.save_to_disk(str(tmp))
        (tmp / "dytune_stats.json").write_text(json.dumps({"stats": stats, "dropped": dict(dropped)}))
        if target.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)  # atomic: a half-written cache entry is never visible
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return datasets.load_from_disk(str(target))
