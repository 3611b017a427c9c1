"""`load_conversations`: sources -> one `datasets.Dataset` of {"id", "messages"} plus a `DataReport`.

A source is a local file (`.json`, `.jsonl`, `.parquet`, `.arrow`, optionally `.gz` for JSON), a folder of
them (recursive; a `save_to_disk` folder loads with `datasets.load_from_disk`), a glob, or a Hub dataset id
(through `datasets.load_dataset`, with `split`, `revision`, `data_files`, `streaming`). Several sources mix:
pass a list, and give any of them a weight with `path:weight`.

A weight multiplies a source's conversations: 2 repeats each one twice (copies get ids `<id>#1`), 0.5
keeps a seeded random half.

A source in a list may also be a mapping with settings of its own (a data mix whose parts differ), e.g. the
original DyT study's RE-WILD rebuild (configs/study/):

    - {source: nyu-dice-lab/allenai_WildChat-1M-Full-Qwen_Qwen2.5-72B-Instruct, turns: first,
       shuffle_seed: 42, take: 200000}
    - {source: cais/mmlu, name: auxiliary_train, format: multiple_choice}
    - {source: allenai/tulu-3-sft-personas-algebra, turns: first}

Keys: `source` (required), `weight`, `format`, `field_map`, `role_map`, `clean`, `turns`, `mmlu_answer_bug`
(see formats.py), `split`, `revision`, `data_files`, `name` (the Hub dataset's configuration), and the row
selection `shuffle_seed` / `skip` / `take`: the source's rows are shuffled as `datasets.Dataset.shuffle(seed=)`
does (local files with the same NumPy permutation), then rows [skip, skip + take) are kept, before any record
is normalised, so the same seed picks the same rows as a `datasets` pipeline would.

`max_samples` then draws a seeded random subset of the mix, kept in source order.
With `streaming=True` reading stops once `max_samples` conversations are kept from a source (a Hub stream is
first shuffled with a 10,000-record buffer, so the draw is approximately random; local files give their first
ones).
"""

from __future__ import annotations

import glob
import itertools
import math
import os
import random
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dytune.data.formats import (TURNS, Drop, canonical_format, detect_format, first_exchange, normalise_turns,
                                 record_id, record_turns, resolve_fields, resolve_roles)
from dytune.data.readers import SUPPORTED_SUFFIXES, Bad, iter_file, iter_rows, suffix_of
from dytune.data.report import DataReport, SourceReport
from dytune.errors import DytuneError

DETECT_RECORDS = 200  # records the format is detected from
BATCH = 1024  # conversations per Arrow batch while loading (bounds the Python objects alive at once)
_WEIGHT = re.compile(r"^(?P<src>.+):(?P<w>\d+(?:\.\d*)?|\.\d+)$")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
REPORT_NAME = "data_report.json"


@dataclass
class _Source:
    spec: str
    weight: float
    kind: str  # "files", "disk" (save_to_disk folder), "hub"
    paths: list[Path]


# settings a source mapping may carry (see the module docstring)
SOURCE_KEYS = ("source", "weight", "format", "field_map", "role_map", "clean", "turns", "mmlu_answer_bug", "split",
               "revision", "data_files", "name", "shuffle_seed", "skip", "take")


@dataclass
class SourceItem:
    """One entry of a source list: where, its weight, and its own settings (empty for a plain string)."""

    spec: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def selects(self) -> bool:
        return any(self.options.get(k) is not None for k in ("shuffle_seed", "skip", "take"))


def _check_weight(spec: str, weight: float) -> None:
    if not (weight > 0 and math.isfinite(weight)):
        raise DytuneError(f"weight of {spec!r} is {weight}: a weight must be a positive number")


def _mapped_item(item: Mapping[str, Any]) -> SourceItem:
    unknown = sorted(set(item) - set(SOURCE_KEYS))
    if unknown:
        raise DytuneError(f"unknown setting(s) {unknown} in data source {dict(item)!r}: a source mapping takes "
                          f"{', '.join(SOURCE_KEYS)}")
    if not item.get("source"):
        raise DytuneError(f"data source mapping {dict(item)!r} has no `source:` (a file, folder, glob or Hub id)")
    options = {k: v for k, v in item.items() if k not in ("source", "weight")}
    if options.get("turns", "all") not in TURNS:
        raise DytuneError(f"turns must be one of {', '.join(TURNS)}, got {options['turns']!r}")
    for key in ("skip", "take"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < (key == "take")):
            raise DytuneError(f"{key} of {item['source']!r} must be a whole number"
                              + (" of at least 1" if key == "take" else " >= 0") + f", got {value!r}")
    weight = float(item.get("weight", 1.0))
    _check_weight(str(item["source"]), weight)
    return SourceItem(str(item["source"]), weight, options)


def _plain_item(item: Any) -> SourceItem:
    """`"a.json"`, `"a.json:2"` or `("a.json", 2.0)`."""
    if isinstance(item, (tuple, list)) and len(item) == 2:
        spec, weight = str(item[0]), float(item[1])
    else:
        spec, weight = str(item), 1.0
        m = _WEIGHT.match(spec)
        if m and not Path(spec).exists():
            spec, weight = m.group("src"), float(m.group("w"))
    _check_weight(spec, weight)
    return SourceItem(spec, weight)


def parse_source_items(source: str | Path | Mapping | Sequence[Any]) -> list[SourceItem]:
    """Every entry of a source (a string, `path:weight`, `(path, weight)` or a mapping) as a `SourceItem`."""
    items = [source] if isinstance(source, (str, Path, Mapping)) else list(source)
    if not items:
        raise DytuneError("no data source given: pass a file, folder, glob or Hub dataset id")
    return [_mapped_item(item) if isinstance(item, Mapping) else _plain_item(item) for item in items]


def parse_sources(source: str | Path | Mapping | Sequence[Any]) -> list[tuple[str, float]]:
    """`"a.json"`, `["a.json:2", "b.jsonl"]` or `[("a.json", 2.0), ...]` -> [(spec, weight)]."""
    return [(item.spec, item.weight) for item in parse_source_items(source)]


def _data_files_in(folder: Path) -> list[Path]:
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).parts
        if path.is_file() and not any(p.startswith(".") for p in rel) and path.name != REPORT_NAME \
                and suffix_of(path) in SUPPORTED_SUFFIXES:
            files.append(path)
    return files


def resolve_source(spec: str, weight: float = 1.0) -> _Source:
    path = Path(spec).expanduser()
    if any(ch in spec for ch in "*?["):
        files = [Path(p) for p in sorted(glob.glob(os.path.expanduser(spec), recursive=True))]
        files = [p for p in files if p.is_file() and suffix_of(p) in SUPPORTED_SUFFIXES and p.name != REPORT_NAME]
        if not files:
            raise DytuneError(f"no data file matches {spec!r} (supported: {', '.join(SUPPORTED_SUFFIXES)})")
        return _Source(spec, weight, "files", files)
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return _Source(spec, weight, "disk", [path])
        files = _data_files_in(path)
        if not files:
            seen = ", ".join(sorted({p.suffix or p.name for p in path.iterdir()})[:10]) or "nothing"
            raise DytuneError(f"folder {path} holds no data file (found: {seen}); supported: "
                              f"{', '.join(SUPPORTED_SUFFIXES)}")
        return _Source(spec, weight, "files", files)
    if path.is_file():
        if suffix_of(path) not in SUPPORTED_SUFFIXES:
            raise DytuneError(f"{path}: unsupported file type {path.suffix!r}; supported: "
                              f"{', '.join(SUPPORTED_SUFFIXES)}")
        return _Source(spec, weight, "files", [path])
    if not _HUB_ID.match(spec) or spec.startswith((".", "~")) or suffix_of(path) in SUPPORTED_SUFFIXES:
        raise DytuneError(f"data source {spec!r} not found: no such file or folder, and it is not a Hub dataset id "
                          "(owner/name)")
    return _Source(spec, weight, "hub", [])


# -- reading -----------------------------------------------------------------------------------------------
def _progress(total: int | None, desc: str, unit: str = "B"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=False, disable=None)


def _file_records(path: Path) -> Iterator[Any]:
    gz = path.name.lower().endswith(".gz")
    with _progress(None if gz else path.stat().st_size, f"reading {path.name}") as bar:
        yield from iter_file(path, bar)


@contextmanager
def _offline_if_unreachable():
    """Make `datasets` go straight to its cache when the Hub is unreachable (instead of ~25 s of retries)."""
    import datasets.config
    import huggingface_hub.constants as hub_constants

    from dytune._hub import hub_reachable

    if datasets.config.HF_HUB_OFFLINE or hub_reachable():
        yield
        return
    old = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = old


def load_hub_dataset(repo: str, *, split: str = "train", revision: str | None = None,
                     data_files: Any = None, streaming: bool = False, **kwargs: Any) -> Any:
    """`datasets.load_dataset` with the failures a user can fix turned into clear errors."""
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    page = f"https://huggingface.co/datasets/{repo}"
    local = f" (there is no local file or folder {repo!r} either)" if "/" in repo else ""
    try:
        with _offline_if_unreachable():
            return datasets.load_dataset(repo, split=split, revision=revision, data_files=data_files,
                                         streaming=streaming, **kwargs)
    except DatasetNotFoundError as err:
        raise DytuneError(
            f"Hub dataset {repo!r} was not found, or it is gated/private: check the id at {page}; for a gated "
            "set accept its terms on that page and log in (`hf auth login`, or set HF_TOKEN)"
            + (f" (revision {revision!r})" if revision else "") + f"{local}. datasets said: {err}") from None
    except ConnectionError as err:
        raise DytuneError(
            f"Hub dataset {repo!r} is not in the local cache and the Hub cannot be reached ({err}). Connect to the "
            "internet, or download it where you have one and pass the local files (a folder of "
            f".parquet/.json files works){local}") from None
    except ValueError as err:
        if "split" in str(err).lower():
            raise DytuneError(f"Hub dataset {repo!r}: {err} (choose one with --split / split=)") from None
        raise


@dataclass(frozen=True)
class _Selection:
    """Rows [skip, skip + take) of a source, after an optional seeded shuffle (see the module docstring)."""

    shuffle_seed: int | None = None
    skip: int = 0
    take: int | None = None

    def describe(self) -> str:
        rows = f"rows {self.skip:,} to {self.skip + self.take:,}" if self.take is not None else f"rows from {self.skip:,}"
        return (f"shuffled with seed {self.shuffle_seed}, " if self.shuffle_seed is not None else "") + f"kept {rows}"

    def window(self, n: int) -> range:
        end = n if self.take is None else min(n, self.skip + self.take)
        return range(min(self.skip, n), end)

    def apply_dataset(self, ds: Any) -> Any:
        """A `datasets.Dataset` (or a streamed `IterableDataset`) cut to the selection."""
        if not hasattr(ds, "num_rows"):  # streaming: shuffling needs a buffer, skip/take are lazy
            if self.shuffle_seed is not None:
                ds = ds.shuffle(seed=self.shuffle_seed, buffer_size=10_000)
            ds = ds.skip(self.skip) if self.skip else ds
            return ds.take(self.take) if self.take is not None else ds
        if self.shuffle_seed is not None:
            ds = ds.shuffle(seed=self.shuffle_seed)
        return ds.select(self.window(ds.num_rows))

    def apply_records(self, records: Iterator[Any]) -> Iterator[Any]:
        """The same selection over local records (unreadable ones included, so positions stay those of the file)."""
        if self.shuffle_seed is None:
            return itertools.islice(records, self.skip, None if self.take is None else self.skip + self.take)
        import numpy as np

        rows = list(records)
        order = np.random.default_rng(self.shuffle_seed).permutation(len(rows))  # as datasets' shuffle(seed=)
        kept = self.window(len(rows))
        return (rows[i] for i in order[kept.start:kept.stop])


def _source_records(src: _Source, split: str, revision: str | None, data_files: Any, streaming: bool,
                    seed: int, load_kwargs: Mapping[str, Any], selection: _Selection | None = None
                    ) -> Iterator[tuple[str, str, Iterator[Any]]]:
    """(label, id_prefix, records) for each unit of a source: each file, or the whole Hub/disk dataset (a
    selection makes one unit of all of a source's files, as it applies to the source as a whole)."""
    if src.kind == "files":
        if selection is not None:
            chained = itertools.chain.from_iterable(_file_records(p) for p in src.paths)
            yield src.spec, src.paths[0].name.split(".")[0], selection.apply_records(chained)
            return
        for path in src.paths:
            yield str(path), path.name.split(".")[0], _file_records(path)
        return
    if src.kind == "disk":
        import datasets

        ds = datasets.load_from_disk(str(src.paths[0]))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DytuneError(f"{src.spec} has splits {list(ds)}, not {split!r}: choose one with split=")
            ds = ds[split]
        yield src.spec, src.paths[0].name, iter_rows(selection.apply_dataset(ds) if selection else ds)
        return
    ds = load_hub_dataset(src.spec, split=split, revision=revision, data_files=data_files, streaming=streaming,
                          **load_kwargs)
    if selection is not None:
        ds = selection.apply_dataset(ds)
    elif streaming and hasattr(ds, "shuffle"):
        ds = ds.shuffle(seed=seed, buffer_size=10_000)
    total = getattr(ds, "num_rows", None)

    def rows():
        with _progress(total, f"reading {src.spec}", unit="rec") as bar:
            for row in iter_rows(ds):
                bar.update(1)
                yield row

    yield src.spec, src.spec.rsplit("/", 1)[-1], rows()


# -- building the dataset ----------------------------------------------------------------------------------
def _schema():
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema([("id", pa.string()), ("messages", pa.list_(message))])


class _Collector:
    """Kept conversations, converted to Arrow every BATCH records."""

    def __init__(self) -> None:
        self.tables: list = []
        self.ids: list[str] = []
        self.messages: list[list[dict[str, str]]] = []
        self.turns = 0

    def add(self, cid: str, messages: list[dict[str, str]]) -> None:
        self.ids.append(cid)
        self.messages.append(messages)
        self.turns += len(messages)
        if len(self.ids) >= BATCH:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self.ids:
            self.tables.append(pa.Table.from_pydict({"id": self.ids, "messages": self.messages}, schema=_schema()))
            self.ids, self.messages = [], []

    def table(self):
        import pyarrow as pa

        self.flush()
        return pa.concat_tables(self.tables) if self.tables else _schema().empty_table()


def _read_unit(records: Iterator[Any], label: str, id_prefix: str, fmt: str | None, fields: dict,
               roles: dict, clean: bool, rep: SourceReport, out: _Collector, limit: int | None,
               turns: str = "all", mmlu_answer_bug: bool = False) -> str | None:
    """Normalise one file's (or dataset's) records into `out`; returns the format used."""
    pending: list[Any] = []
    if fmt is None:  # detect from the first DETECT_RECORDS readable records
        dicts = 0
        for record in records:
            pending.append(record)
            dicts += isinstance(record, dict)
            if dicts >= DETECT_RECORDS:
                break
        if dicts:
            fmt = detect_format((r for r in pending if isinstance(r, dict)), fields, label)
    name = Path(label).name if os.sep in label else label
    for index, record in enumerate(itertools.chain(pending, records)):
        rep.read += 1
        where = f"{name} record {index}"
        if isinstance(record, Bad):
            rep.drop(record.reason, name, record.detail)
            continue
        try:
            raw = record_turns(record, fmt, fields, roles, rep.fixes, mmlu_answer_bug)
            if turns == "first" and fmt != "text":
                raw = first_exchange(raw, rep.fixes)
            messages = normalise_turns(raw, rep.fixes, clean)
        except Drop as drop:
            rep.drop(drop.reason, where, drop.detail)
            continue
        out.add(record_id(record, fields, f"{id_prefix}-{index}"), messages)
        rep.kept += 1
        if limit is not None and rep.kept >= limit:
            break
    return fmt


def _no_usable_record(rep: SourceReport) -> DytuneError:
    if not rep.read:
        return DytuneError(f"{rep.source}: no record found (the file or dataset is empty)")
    reasons = "; ".join(f"{reason}: {count}" + (f" (e.g. {rep.examples[reason][0]})" if rep.examples.get(reason)
                                                 else "")
                        for reason, count in rep.dropped.most_common())
    return DytuneError(f"{rep.source}: no usable conversation in {rep.read} records read. Dropped: {reasons}. "
                       "Check the format (format=, field_map=, role_map=) or the file itself")


def load_conversations(
    source: str | Path | Sequence[Any],
    format: str | None = None,  # noqa: A002 - the public API name
    *,
    max_samples: int | None = None,
    seed: int = 0,
    field_map: Mapping[str, Any] | None = None,
    role_map: Mapping[str, Any] | None = None,
    clean: bool = False,
    split: str = "train",
    revision: str | None = None,
    streaming: bool = False,
    data_files: Any = None,
    load_kwargs: Mapping[str, Any] | None = None,
    turns: str = "all",
    mmlu_answer_bug: bool = False,
):
    """Load, validate and normalise conversations from one or more sources (see the module docstring).

    Returns `(dataset, report)`: a `datasets.Dataset` with columns `id` (str) and `messages` (list of
    {"role": "system"|"user"|"assistant", "content": str}), and a `DataReport` of what was read, kept and
    dropped (by reason, per source). Bad records never stop the load; a source with no usable record raises
    `DytuneError` with the reasons.

    format: alpaca | sharegpt | messages | prompt_completion | text | multiple_choice (default: detected per file).
    turns: all | first (only the first user and assistant turn). mmlu_answer_bug: see formats.py.
    A source mapping's own settings (module docstring) override these for that source.
    field_map / role_map: column and speaker names (see formats.py; LLaMA-Factory and axolotl spellings work).
    clean: ShareGPT cleaning (clean.py). split / revision / data_files / streaming / load_kwargs: for Hub ids,
    passed to `datasets.load_dataset` (load_kwargs e.g. {"name": "config", "token": ...}).
    """
    import datasets
    from datasets.table import InMemoryTable

    if turns not in TURNS:
        raise DytuneError(f"turns must be one of {', '.join(TURNS)}, got {turns!r}")
    if max_samples is not None and max_samples <= 0:
        raise DytuneError(f"max_samples must be positive, got {max_samples}")
    defaults = dict(format=format, field_map=field_map, role_map=role_map, clean=clean, turns=turns,
                    mmlu_answer_bug=mmlu_answer_bug, split=split, revision=revision, data_files=data_files)
    report = DataReport()
    tables = []
    for item in parse_source_items(source):
        o = {**defaults, **item.options}
        fmt = canonical_format(o["format"])
        fields, tag_roles = resolve_fields(o["field_map"])
        roles = resolve_roles(o["role_map"], tag_roles)
        kwargs = {**(load_kwargs or {}), **({"name": o["name"]} if o.get("name") else {})}
        selection = _Selection(o.get("shuffle_seed"), o.get("skip") or 0, o.get("take")) if item.selects else None
        spec, weight = item.spec, item.weight
        src = resolve_source(spec, weight)
        rep = SourceReport(source=spec, weight=weight)
        report.sources.append(rep)
        if selection is not None:
            report.note(f"{spec}: {selection.describe()}")
        out = _Collector()
        used = []
        limit = max_samples if streaming else None
        for label, prefix, records in _source_records(src, o["split"], o["revision"], o["data_files"], streaming,
                                                      seed, kwargs, selection):
            rep.files += 1
            used.append(_read_unit(records, label, prefix, fmt, fields, roles, o["clean"], rep, out,
                                   None if limit is None else limit - rep.kept, o["turns"],
                                   o["mmlu_answer_bug"]) or "?")
            if limit is not None and rep.kept >= limit:
                break
        rep.format = "+".join(dict.fromkeys(used)) or "?"
        if not rep.kept:
            raise _no_usable_record(rep)
        tables.append(_apply_weight(out.table(), weight, seed, report))
    table = _concat(tables)
    if max_samples is not None and table.num_rows > max_samples:
        keep = sorted(random.Random(seed).sample(range(table.num_rows), max_samples))
        report.subsampled_out += table.num_rows - max_samples
        table = table.take(keep)
    report.selected = table.num_rows
    report.turns = _count_turns(table)
    dropped = report.dropped
    if dropped:  # never silent about lost data; the full table is report.table()
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items(), key=lambda kv: -kv[1]))
        print(f"dytune data: read {report.read:,} records, kept {report.kept:,}, dropped {sum(dropped.values()):,} "
              f"({reasons})", file=sys.stderr)
    # our own fingerprint: datasets would otherwise hash the table by pickling it (a copy of all the text)
    return datasets.Dataset(InMemoryTable(table), fingerprint=table_fingerprint(table)), report


def _apply_weight(table, weight: float, seed: int, report: DataReport):
    """Repeat/subsample one source's conversations by its weight (copies get ids `<id>#k`)."""
    import pyarrow as pa

    if weight == 1.0:
        return table
    n = table.num_rows
    whole, frac = int(weight), weight - int(weight)
    parts = [table] if whole >= 1 else []
    ids = table.column("id").to_pylist()
    for k in range(1, whole):
        copy = table.set_column(0, "id", pa.array([f"{i}#{k}" for i in ids], pa.string()))
        parts.append(copy)
    extra = round(frac * n)
    if extra:
        pick = sorted(random.Random(seed).sample(range(n), extra))
        part = table.take(pick)
        if whole >= 1:
            part = part.set_column(0, "id", pa.array([f"{ids[i]}#{whole}" for i in pick], pa.string()))
        parts.append(part)
    out = pa.concat_tables(parts) if parts else table.slice(0, 0)
    report.repeated += max(0, out.num_rows - n)
    report.subsampled_out += max(0, n - out.num_rows)
    return out


def table_fingerprint(*tables: Any) -> str:
    """Hash of Arrow tables' buffers (xxhash, memory speed): equal contents give equal fingerprints."""
    try:
        import xxhash

        h = xxhash.xxh3_128()
    except ImportError:  # pragma: no cover - datasets depends on xxhash
        import hashlib

        h = hashlib.blake2b(digest_size=16)
    for table in tables:
        h.update(repr(table.schema.names).encode())
        for column in table.columns:
            for chunk in column.chunks:
                h.update(f"{chunk.offset}:{len(chunk)}".encode())
                for buf in chunk.buffers():
                    if buf is not None:
                        h.update(memoryview(buf))
    return h.hexdigest()


def _concat(tables: list):
    import pyarrow as pa

    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _count_turns(table) -> int:
    import pyarrow.compute as pc

    lengths = pc.list_value_length(table.column("messages"))
    return int(pc.sum(lengths).as_py() or 0)
