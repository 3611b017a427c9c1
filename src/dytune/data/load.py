"""`load_conversations`: sources -> one `datasets.Dataset` of {"id", "messages"} plus a `DataReport`.

A source is a local file (`.json`, `.jsonl`, `.parquet`, `.arrow`, optionally `.gz` for JSON), a folder of
them (recursive; a `save_to_disk` folder loads with `datasets.load_from_disk`), a glob, or a Hub dataset id
(through `datasets.load_dataset`, with `split`, `revision`, `data_files`, `streaming`). Several sources mix:
pass a list, and give any of them a weight with `path:weight`.

A weight multiplies a source's conversations: 2 repeats each one twice (copies get ids `<id>#1`), 0.5
keeps a seeded random half. `max_samples` then draws a seeded random subset of the mix, kept in source order.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dytune.data.formats import (Drop, canonical_format, detect_format, normalise_turns, record_id,
                                 record_turns, resolve_fields, resolve_roles)
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


def parse_sources(source: str | Path | Sequence[Any]) -> list[tuple[str, float]]:
    """`"a.json"`, `["a.json:2", "b.jsonl"]` or `[("a.json", 2.0), ...]` -> [(spec, weight)]."""
    items = [source] if isinstance(source, (str, Path)) else list(source)
    if not items:
        raise DytuneError("no data source given: pass a file, folder, glob or Hub dataset id")
    out = []
    for item in items:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            spec, weight = str(item[0]), float(item[1])
        else:
            spec, weight = str(item), 1.0
            m = _WEIGHT.match(spec)
            if m and not Path(spec).exists():
                spec, weight = m.group("src"), float(m.group("w"))
        if not (weight > 0 and math.isfinite(weight)):
            raise DytuneError(f"weight of {spec!r} is {weight}: a weight must be a positive number")
        out.append((spec, weight))
    return out


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

    from dytune.models import _hub_reachable

    if datasets.config.HF_HUB_OFFLINE or _hub_reachable():
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


def _source_records(src: _Source, split: str, revision: str | None, data_files: Any, streaming: bool,
                    seed: int, load_kwargs: Mapping[str, Any]) -> Iterator[tuple[str, str, Iterator[Any]]]:
    """(label, id_prefix, records) for each unit of a source: each file, or the whole Hub/disk dataset."""
    if src.kind == "files":
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
        yield src.spec, src.paths[0].name, iter_rows(ds)
        return
    ds = load_hub_dataset(src.spec, split=split, revision=revision, data_files=data_files, streaming=streaming,
                          **load_kwargs)
    if streaming and hasattr(ds, "shuffle"):
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
               roles: dict, clean: bool, rep: SourceReport, out: _Collector, limit: int | None) -> str | None:
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
            turns = record_turns(record, fmt, fields, roles, rep.fixes)
            messages = normalise_turns(turns, rep.fixes, clean)
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
):
    """Load, validate and normalise conversations from one or more sources (see the module docstring).

    Returns `(dataset, report)`: a `datasets.Dataset` with columns `id` (str) and `messages` (list of
    {"role": "system"|"user"|"assistant", "content": str}), and a `DataReport` of what was read, kept and
    dropped (by reason, per source). Bad records never stop the load; a source with no usable record raises
    `DytuneError` with the reasons.

    format: alpaca | sharegpt | messages | prompt_completion | text (default: detected per file).
    field_map / role_map: column and speaker names (see formats.py; LLaMA-Factory and axolotl spellings work).
    clean: ShareGPT cleaning (clean.py). split / revision / data_files / streaming / load_kwargs: for Hub ids,
    passed to `datasets.load_dataset` (load_kwargs e.g. {"name": "config", "token": ...}).
    """
    import datasets
    from datasets.table import InMemoryTable

    fmt = canonical_format(format)
    fields, tag_roles = resolve_fields(field_map)
    roles = resolve_roles(role_map, tag_roles)
    if max_samples is not None and max_samples <= 0:
        raise DytuneError(f"max_samples must be positive, got {max_samples}")
    report = DataReport()
    tables = []
    for spec, weight in parse_sources(source):
        src = resolve_source(spec, weight)
        rep = SourceReport(source=spec, weight=weight)
        report.sources.append(rep)
        out = _Collector()
        used = []
        limit = max_samples if streaming else None
        for label, prefix, records in _source_records(src, split, revision, data_files, streaming, seed,
                                                      load_kwargs or {}):
            rep.files += 1
            used.append(_read_unit(records, label, prefix, fmt, fields, roles, clean, rep, out,
                                   None if limit is None else limit - rep.kept) or "?")
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
