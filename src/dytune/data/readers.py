"""Read records from files without trusting them: every record comes out as a dict or as a `Bad` saying why not.

JSON arrays are parsed one element at a time with `json.JSONDecoder.raw_decode` over a sliding buffer, so a
125 MB file is never held as one string, and a file cut off mid-record (the ShareGPT V3 file on PyPI) yields
every complete record and then one `truncated_record`. A broken element in the middle is skipped by matching
its brackets (string-aware) and parsing resumes at the next one. Bytes that are not UTF-8 are decoded with
`surrogateescape`, so they cannot stop the parse; the record that holds them is dropped later
(`invalid_utf8`) only if they sit in text that would be trained on.

`datasets.load_dataset("json")` would stop at the first bad byte or line (pyarrow's reader), which is why
local JSON has its own reader; Parquet and Arrow go through pyarrow batch by batch.
"""

from __future__ import annotations

import codecs
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

CHUNK = 1 << 20  # bytes read per refill of the JSON buffer
JSON_SUFFIXES = (".json", ".jsonl", ".ndjson", ".jsonlines")
TABLE_SUFFIXES = (".parquet", ".arrow")
SUPPORTED_SUFFIXES = JSON_SUFFIXES + TABLE_SUFFIXES + tuple(s + ".gz" for s in JSON_SUFFIXES)
# keys under which a top-level JSON object may hold the record list: {"data": [...]}
WRAPPER_KEYS = ("data", "train", "examples", "records", "rows", "instances")

_WS = re.compile(r"[\s\ufeff]*")
_BRACKET_OR_QUOTE = re.compile(r'["{}\[\]]')
_QUOTE_OR_BACKSLASH = re.compile(r'["\\]')
_SCALAR_END = re.compile(r"[,\]\n]")


@dataclass(frozen=True)
class Bad:
    """A record that could not be read: `reason` is a drop reason (see report.py), `detail` says where/why."""

    reason: str
    detail: str = ""


Record = dict[str, Any] | Bad


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        return "".join(path.suffixes[-2:]).lower()
    return path.suffix.lower()


def iter_file(path: Path, progress: Any = None) -> Iterator[Record]:
    """Records of one local file, chosen by extension (`.json[.gz]`, `.jsonl[.gz]`, `.parquet`, `.arrow`)."""
    suffix = suffix_of(path)
    if suffix in (".parquet",):
        yield from iter_parquet(path, progress)
    elif suffix in (".arrow",):
        yield from iter_arrow(path, progress)
    elif suffix.removesuffix(".gz") in (".jsonl", ".ndjson", ".jsonlines"):
        yield from iter_jsonl(path, progress)
    else:
        yield from iter_json(path, progress)


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


# -- JSON Lines ---------------------------------------------------------------------------------------------
def iter_jsonl(path: Path, progress: Any = None) -> Iterator[Record]:
    """One record per line; a bad line is one `Bad`, blank lines are skipped."""
    decode = json.JSONDecoder(strict=False).decode
    with _open(path) as f:
        lineno = 0
        for raw in f:
            lineno += 1
            if progress is not None:
                progress.update(len(raw))
            line = raw.decode("utf-8", "surrogateescape").strip()
            if not line:
                continue
            try:
                value = decode(line)
            except json.JSONDecodeError as err:
                # a last line without its newline that fails to parse was cut off, not garbled
                reason = "truncated_record" if not raw.endswith(b"\n") else "malformed_json"
                yield Bad(reason, f"line {lineno}: {err.msg} at column {err.colno}")
                continue
            yield value if isinstance(value, dict) else Bad("not_an_object", f"line {lineno}: {type(value).__name__}")


# -- JSON (array, single object or concatenated objects) ----------------------------------------------------
class _Buffer:
    """Decoded text of a byte stream, refilled on demand; `text[start:]` is kept across refills."""

    def __init__(self, f: IO[bytes], progress: Any = None, chunk: int | None = None):
        self.f, self.progress = f, progress
        self.chunk = chunk or CHUNK
        self.decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.text = ""
        self.eof = False
        self.consumed_chars = 0  # chars dropped from the front, for error positions

    def refill(self, start: int) -> int:
        """Drop text before `start`, append at least one chunk (more for a large record); return the new start."""
        size = max(self.chunk, len(self.text) - start)  # grow geometrically so long records stay linear
        data = self.f.read(size)
        if self.progress is not None:
            self.progress.update(len(data))
        self.eof = not data
        self.consumed_chars += start
        self.text = self.text[start:] + self.decoder.decode(data, final=self.eof)
        return 0


def iter_json(path: Path, progress: Any = None, chunk: int | None = None) -> Iterator[Record]:
    """Records of a `.json` file: a top-level array, an object holding one (`{"data": [...]}`), a single record,
    or JSON Lines saved as `.json`."""
    with _open(path) as f:
        head = f.read(65536)
    first = head.lstrip(b" \t\r\n\xef\xbb\xbf")[:1]
    if first == b"{":
        line = head.lstrip(b" \t\r\n\xef\xbb\xbf").split(b"\n", 1)
        if len(line) == 2:
            try:  # a complete object on the first line means JSON Lines (unless it wraps the records)
                first_value = json.loads(line[0].decode("utf-8", "surrogateescape"), strict=False)
            except json.JSONDecodeError:
                first_value = None
            if isinstance(first_value, dict) and _unwrap(first_value) is None:
                yield from iter_jsonl(path, progress)
                return
    elif first not in (b"[", b""):
        yield Bad("malformed_json", f"the file starts with {first!r}, not a JSON array or object")
        return
    with _open(path) as f:
        yield from _iter_values(_Buffer(f, progress, chunk))


def _iter_values(buf: _Buffer) -> Iterator[Record]:
    decoder = json.JSONDecoder(strict=False)  # strict=False: raw control characters inside strings are fine
    pos = buf.refill(0)
    pos = _WS.match(buf.text, pos).end()
    if pos >= len(buf.text) and buf.eof:
        return
    in_array = buf.text.startswith("[", pos)
    if in_array:
        pos += 1
    index = 0
    while True:
        # skip whitespace and the separating comma (extra commas, as in `[a,,b]`, are tolerated too)
        while True:
            pos = _WS.match(buf.text, pos).end()
            if pos < len(buf.text) and in_array and buf.text[pos] == ",":
                pos += 1
                continue
            if pos >= len(buf.text) - 1 and not buf.eof:
                pos = buf.refill(pos)
                continue
            break
        if pos >= len(buf.text):  # end of file (for an array: cut off between records, nothing lost)
            return
        if in_array and buf.text[pos] == "]":
            return
        where = f"record {index} (char {buf.consumed_chars + pos})"
        try:
            value, end = decoder.raw_decode(buf.text, pos)
            if end >= len(buf.text) and not buf.eof and not isinstance(value, (dict, list)):
                raise json.JSONDecodeError("scalar at buffer end", buf.text, end)  # a number may go on
        except json.JSONDecodeError as err:
            # An error at the end of the buffer only means the record is not all here yet.
            ran_off = err.pos >= len(buf.text) - 8 or err.msg.startswith(("Unterminated string", "scalar at"))
            if ran_off and not buf.eof:
                pos = buf.refill(pos)
                continue
            if ran_off:  # ...and at the end of the file it means the file was cut off
                yield Bad("truncated_record", f"{where}: the file ends inside this record ({err.msg})")
                return
            end = _skip_value(buf, pos)
            yield Bad("malformed_json", f"{where}: {err.msg}")
            index += 1
            if end is None:  # the broken record runs to the end of the file
                return
            pos = end  # _skip_value may have refilled the buffer: `end` is in its current coordinates
            continue
        index += 1
        if isinstance(value, dict) and not in_array and index == 1:
            # a single top-level object: either a wrapper {"data": [...]} or one record
            rest = _WS.match(buf.text, end).end()
            while rest >= len(buf.text) and not buf.eof:  # is anything left after this object?
                end = buf.refill(end)
                rest = _WS.match(buf.text, end).end()
            if rest >= len(buf.text):
                inner = _unwrap(value)
                if inner is not None:
                    for i, item in enumerate(inner):
                        yield item if isinstance(item, dict) else Bad("not_an_object", f"record {i}: "
                                                                                       f"{type(item).__name__}")
                    return
        yield value if isinstance(value, dict) else Bad("not_an_object", f"{where}: {type(value).__name__}")
        pos = end


def _unwrap(value: dict) -> list | None:
    for key in WRAPPER_KEYS:
        if isinstance(value.get(key), list) and len(value) <= 4:
            return value[key]
    return None


def _skip_value(buf: _Buffer, pos: int) -> int | None:
    """End of the (broken) JSON value starting at `pos`, found by matching brackets outside strings; refills
    the buffer as needed, so the returned index is into the current `buf.text` after rebasing `pos` to 0."""
    pos = buf.refill(pos) if not buf.eof and len(buf.text) - pos < 2 else pos
    start = pos
    if buf.text[pos] not in "{[":  # a broken scalar: skip to the next separator
        while True:
            m = _SCALAR_END.search(buf.text, pos)
            if m:
                return m.start()
            if buf.eof:
                return None
            start = pos = buf.refill(start)
    depth, i = 0, pos
    while True:
        m = _BRACKET_OR_QUOTE.search(buf.text, i)
        if m is None:
            if buf.eof:
                return None
            shift = start
            buf.refill(start)
            i -= shift
            start = 0
            continue
        c, i = m.group(), m.end()
        if c == '"':
            while True:
                q = _QUOTE_OR_BACKSLASH.search(buf.text, i)
                if q is None or (q.group() == "\\" and q.end() >= len(buf.text)):
                    if buf.eof:
                        return None
                    shift = start
                    buf.refill(start)
                    i -= shift
                    start = 0
                    continue
                if q.group() == "\\":
                    i = q.end() + 1
                    continue
                i = q.end()
                break
        elif c in "{[":
            depth += 1
        else:
            depth -= 1
            if depth <= 0:
                return i


# -- Parquet, Arrow, datasets folders ---------------------------------------------------------------------
def iter_parquet(path: Path, progress: Any = None, batch_size: int = 1024) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as err:  # noqa: BLE001 - any pyarrow failure means the file is unusable
        yield Bad("unreadable_file", f"{path.name}: {err}")
        return
    try:
        for batch in pf.iter_batches(batch_size=batch_size):
            if progress is not None:
                progress.update(batch.nbytes)
            yield from batch.to_pylist()
    except Exception as err:  # noqa: BLE001 - a corrupt row group: keep what was read
        yield Bad("unreadable_file", f"{path.name}: stopped reading at a corrupt part: {err}")


def iter_arrow(path: Path, progress: Any = None) -> Iterator[Record]:
    """Arrow IPC file or stream (the latter is what `datasets` writes in its cache and `save_to_disk`)."""
    import pyarrow as pa

    try:
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            source.seek(0)
            batches = iter(pa.ipc.open_stream(source))
        for batch in batches:
            if progress is not None:
                progress.update(batch.nbytes)
            yield from batch.to_pylist()
    except Exception as err:  # noqa: BLE001
        yield Bad("unreadable_file", f"{path.name}: {err}")


def iter_rows(dataset: Any, batch_size: int = 1024) -> Iterator[Record]:
    """Rows of a `datasets.Dataset` or `IterableDataset` as dicts."""
    if hasattr(dataset, "iter") and hasattr(dataset, "num_rows"):
        for batch in dataset.iter(batch_size=batch_size):
            keys = list(batch)
            for values in zip(*(batch[k] for k in keys)):
                yield dict(zip(keys, values))
    else:
        yield from dataset
