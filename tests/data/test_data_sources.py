"""Sources: file types, folders, globs, save_to_disk, weights, max_samples, and the Hub (monkeypatched)."""

from __future__ import annotations

import gzip
import json
import time

import pytest

from dytune.data import load_conversations
from dytune.data.load import parse_sources
from dytune.errors import DytuneError


def _conv(i: int) -> dict:
    return {"id": f"s{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}


def _rows(n: int, start: int = 0) -> list[dict]:
    return [_conv(i) for i in range(start, start + n)]


def test_parquet_arrow_file_and_stream_gz_and_wrapped_json(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(_rows(5))
    pq.write_table(table, tmp_path / "d.parquet")
    with pa.OSFile(str(tmp_path / "file.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    with pa.OSFile(str(tmp_path / "stream.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in _rows(5)))
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": 1, "data": _rows(5)}))
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in _rows(5)))  # JSONL named .json
    (tmp_path / "single.json").write_text(json.dumps(_conv(0), indent=2))
    for name in ("d.parquet", "file.arrow", "stream.arrow", "d.jsonl.gz", "wrapped.json", "lines.json"):
        convs, report = load_conversations(str(tmp_path / name))
        assert list(convs["id"]) == [f"s{i}" for i in range(5)], name
        assert convs[4]["messages"] == [{"role": "user", "content": "q4"}, {"role": "assistant", "content": "a4"}]
    assert list(load_conversations(str(tmp_path / "single.json"))[0]["id"]) == ["s0"]


def test_folder_glob_and_save_to_disk(tmp_path):
    import datasets

    folder = tmp_path / "data"
    (folder / "part2").mkdir(parents=True)
    (folder / "a.json").write_text(json.dumps(_rows(3)))
    (folder / "part2" / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(2, 10)))
    (folder / "README.md").write_text("not data")
    (folder / "data_report.json").write_text("{}")  # an earlier report is never read as data
    convs, report = load_conversations(str(folder))
    assert list(convs["id"]) == ["s0", "s1", "s2", "s10", "s11"] and report.sources[0].files == 2
    convs, _ = load_conversations(str(folder / "**" / "*.jsonl"))
    assert list(convs["id"]) == ["s10", "s11"]
    with pytest.raises(DytuneError, match="no data file matches"):
        load_conversations(str(tmp_path / "*.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DytuneError, match="holds no data file"):
        load_conversations(str(tmp_path / "empty"))

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(_rows(4)),
                               "test": datasets.Dataset.from_list(_rows(2, 50))})
    dd.save_to_disk(str(tmp_path / "saved"))
    assert list(load_conversations(str(tmp_path / "saved"))[0]["id"]) == ["s0", "s1", "s2", "s3"]
    assert list(load_conversations(str(tmp_path / "saved"), split="test")[0]["id"]) == ["s50", "s51"]
    with pytest.raises(DytuneError, match="not 'dev'"):
        load_conversations(str(tmp_path / "saved"), split="dev")


def test_missing_paths_give_clear_errors(tmp_path):
    with pytest.raises(DytuneError, match="not found: no such file or folder"):
        load_conversations(str(tmp_path / "nope.json"))
    with pytest.raises(DytuneError, match="not found"):
        load_conversations("./relative/missing")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DytuneError, match="unsupported file type '.csv'"):
        load_conversations(str(tmp_path / "x.csv"))


def test_weights_and_mixing(tmp_path, alpaca_path, sharegpt_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps(_rows(10)))
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps(r) + "\n" for r in _rows(4, 100)))
    convs, report = load_conversations([f"{a}:2", str(b)])
    ids = list(convs["id"])
    assert len(ids) == 24 and ids[:10] == [f"s{i}" for i in range(10)]
    assert ids[10:20] == [f"s{i}#1" for i in range(10)] and ids[20:] == ["s100", "s101", "s102", "s103"]
    assert report.repeated == 10 and [s.weight for s in report.sources] == [2.0, 1.0]
    half, report = load_conversations([(str(a), 0.5)], seed=3)
    assert len(half) == 5 and report.subsampled_out == 5
    assert list(half["id"]) == sorted(half["id"], key=lambda s: int(s[1:]))  # source order kept
    assert list(load_conversations([(str(a), 0.5)], seed=3)[0]["id"]) == list(half["id"])  # seeded
    mixed, report = load_conversations([str(alpaca_path), str(sharegpt_path)])
    assert len(mixed) == 1300 and [s.format for s in report.sources] == ["alpaca", "sharegpt"]
    assert parse_sources(["x.json:0.25", ("y", 3)]) == [("x.json", 0.25), ("y", 3.0)]
    for bad in ("x.json:0", ("x.json", -1)):
        with pytest.raises(DytuneError, match="must be a positive number"):
            parse_sources([bad])


def test_max_samples_is_seeded_and_keeps_order(sharegpt_path):
    first, report = load_conversations(str(sharegpt_path), max_samples=50, seed=1)
    again, _ = load_conversations(str(sharegpt_path), max_samples=50, seed=1)
    other, _ = load_conversations(str(sharegpt_path), max_samples=50, seed=2)
    assert list(first["id"]) == list(again["id"]) != list(other["id"])
    order = [int(i.split("_")[1]) for i in first["id"]]
    assert order == sorted(order) and len(set(order)) == 50
    assert (report.read, report.kept, report.subsampled_out) == (500, 50, 450)
    with pytest.raises(DytuneError, match="max_samples must be positive"):
        load_conversations(str(sharegpt_path), max_samples=0)


def test_streaming_local_file_stops_early(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows(1000)))
    convs, report = load_conversations(str(path), max_samples=10, streaming=True)
    assert list(convs["id"]) == [f"s{i}" for i in range(10)] and report.read == 10


# -- the Hub, through datasets.load_dataset (no network here: monkeypatched) --------------------------------
def test_hub_id_goes_through_load_dataset(monkeypatch, rewild_rows):
    import datasets

    calls = []

    def fake_load(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list(rewild_rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr("dytune._hub.hub_reachable", lambda *a, **k: True)
    convs, report = load_conversations("nyu-dice-lab/wildchat50m-rewild-sft-385700", split="train[:100]",
                                       revision="abc123", data_files="data/*.parquet", max_samples=5)
    assert calls == [("nyu-dice-lab/wildchat50m-rewild-sft-385700",
                      {"split": "train[:100]", "revision": "abc123", "data_files": "data/*.parquet",
                       "streaming": False})]
    assert len(convs) == 5 and report.sources[0].format == "messages"
    assert report.sources[0].read == 13 and report.dropped == {"no_assistant_reply": 1}


def test_hub_streaming_reads_only_what_it_needs(monkeypatch, rewild_rows):
    import datasets

    consumed = []

    def gen():
        for i in range(30_000):
            consumed.append(i)
            yield {**rewild_rows[i % 12], "conversation_hash": f"row{i}"}

    monkeypatch.setattr(datasets, "load_dataset",
                        lambda path, **kw: datasets.IterableDataset.from_generator(gen))
    monkeypatch.setattr("dytune._hub.hub_reachable", lambda *a, **k: True)
    convs, report = load_conversations("org/huge", max_samples=20, streaming=True, seed=0)
    assert len(convs) == 20 and report.read == 20
    assert len(consumed) < 15_000  # the 10,000-record shuffle buffer fills; the stream is not read to the end


def test_missing_or_gated_hub_repo(monkeypatch):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    def missing(path, **kwargs):
        raise DatasetNotFoundError(f"Dataset '{path}' doesn't exist on the Hub or cannot be accessed.")

    monkeypatch.setattr(datasets, "load_dataset", missing)
    monkeypatch.setattr("dytune._hub.hub_reachable", lambda *a, **k: True)
    with pytest.raises(DytuneError) as err:
        load_conversations("someone/private-set")
    msg = str(err.value)
    assert "'someone/private-set' was not found, or it is gated/private" in msg
    assert "https://huggingface.co/datasets/someone/private-set" in msg and "hf auth login" in msg

    def bad_split(path, **kwargs):
        raise ValueError('Unknown split "dev". Should be one of [\'train\'].')

    monkeypatch.setattr(datasets, "load_dataset", bad_split)
    with pytest.raises(DytuneError, match="Unknown split \"dev\".*--split"):
        load_conversations("someone/set", split="dev")


def test_offline_hub_fails_fast_and_clearly(monkeypatch):
    """Real datasets.load_dataset with the Hub unreachable: a clear error, not minutes of retries."""
    monkeypatch.setattr("dytune._hub.hub_reachable", lambda *a, **k: False)
    start = time.time()
    with pytest.raises(DytuneError) as err:
        load_conversations("dytune-tests/no-such-dataset-xyz")
    assert time.time() - start < 20
    assert "cannot be reached" in str(err.value) or "was not found" in str(err.value)
