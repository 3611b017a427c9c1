"""Corrupt input: every bad record is skipped and counted by reason; nothing crashes mid-load."""

from __future__ import annotations

import json

import pytest

from dytune.data import load_conversations
from dytune.data import readers
from dytune.data.readers import Bad, iter_json
from dytune.errors import DytuneError


def _conv(i: int, text: str = "hello") -> dict:
    return {"id": f"c{i}_0", "conversations": [{"from": "human", "value": f"{text} {i}"},
                                               {"from": "gpt", "value": f"answer {i}"}]}


def _ids(convs) -> list[str]:
    return list(convs["id"])


@pytest.mark.parametrize("indent", [None, 2])
def test_truncated_array_every_cut_position(tmp_path, monkeypatch, indent):
    """Cut a JSON array at every byte: exactly the records complete before the cut come out."""
    records = [_conv(i, "x" * (i * 7)) for i in range(4)]
    text = json.dumps(records, indent=indent)
    ends = []  # offset just after each top-level record's closing brace
    depth = 0
    in_str = esc = False
    for pos, ch in enumerate(text):
        if in_str:
            esc, in_str = (False, in_str) if esc else (ch == "\\", ch != '"')
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 1 and ch == "}":
                ends.append(pos + 1)
    monkeypatch.setattr(readers, "CHUNK", 16)  # many refills: records straddle buffer ends
    path = tmp_path / "cut.json"
    for cut in range(1, len(text)):
        path.write_text(text[:cut])
        out = list(iter_json(path))
        good = [r for r in out if isinstance(r, dict)]
        complete = sum(1 for e in ends if e <= cut)
        assert good == records[:complete], cut
        bad = [r.reason for r in out if isinstance(r, Bad)]
        last_end = max([e for e in ends if e <= cut], default=1)  # after the last complete record or "["
        started = text[last_end:cut].strip(" \n,") != ""
        assert bad == (["truncated_record"] if started and complete < len(records) else []), (cut, bad)


def test_truncated_array_loads_every_complete_record(tmp_path):
    text = json.dumps([_conv(i) for i in range(50)], indent=2)
    cut = text.index('"answer 49"') + 5  # mid-string, like the ShareGPT V3 file
    path = tmp_path / "sharegpt_truncated.json"
    path.write_text(text[:cut])
    convs, report = load_conversations(str(path))
    assert len(convs) == 49 and _ids(convs)[-1] == "c48_0"
    assert report.read == 50 and report.dropped == {"truncated_record": 1}
    assert "the file ends inside this record" in report.sources[0].examples["truncated_record"][0]


def test_broken_records_in_the_middle_of_an_array(tmp_path):
    good = [json.dumps(_conv(i)) for i in range(6)]
    text = ("[\n" + good[0] + ",\n"
            + '{"id": "bad1", "conversations": [{"from": "human", "value": "x"},, ]},\n'  # double comma
            + good[1] + ",\n"
            + "{'id': 'bad2', 'conversations': []},\n"  # single quotes
            + good[2] + ",\n"
            + '"a bare string",\n' + "42,\n"  # not objects
            + good[3] + ",\n"
            + '{"id": "bad3", "conversations": [{"from": "human", "value": NaNx}]},\n'  # bad token
            + good[4] + ",,\n"  # extra comma is tolerated
            + good[5] + ",\n]")  # trailing comma too
    path = tmp_path / "broken.json"
    path.write_text(text)
    convs, report = load_conversations(str(path))
    assert _ids(convs) == [f"c{i}_0" for i in range(6)]
    assert report.dropped == {"malformed_json": 3, "not_an_object": 2}
    assert report.read == 11


def test_malformed_jsonl_lines(tmp_path):
    lines = [json.dumps(_conv(0)), "{not json}", "", "   ", json.dumps(_conv(1)), "[1, 2]",
             json.dumps(_conv(2))[:-1] + ",}", json.dumps(_conv(3)), json.dumps(_conv(4))[:25]]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines))  # no newline at the end: the last line is cut off
    convs, report = load_conversations(str(path))
    assert _ids(convs) == ["c0_0", "c1_0", "c3_0"]
    assert report.dropped == {"malformed_json": 2, "not_an_object": 1, "truncated_record": 1}
    examples = report.sources[0].examples
    assert examples["malformed_json"][0].startswith("bad.jsonl: line 2:")
    assert report.read == 7  # blank lines are not records


def test_wrong_types_and_missing_fields(tmp_path):
    rows = [
        _conv(0),
        {"id": "t1", "conversations": "human: hi\ngpt: hello"},  # a string, not a list
        {"id": "t2", "conversations": [{"from": "human", "value": 42}, {"from": "gpt", "value": "x"}]},
        {"id": "t3", "conversations": [{"from": 1, "value": "hi"}, {"from": "gpt", "value": "x"}]},
        {"id": "t4", "conversations": ["hi", "hello"]},
        {"id": "m1", "conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]},
        {"id": "m2", "conversations": [{"value": "who?"}, {"from": "gpt", "value": "x"}]},
        {"id": "m3"},
        {"id": "e1", "conversations": []},
        {"id": "e2", "conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "  \n"}]},
        {"id": "n1", "conversations": [{"from": "human", "value": None}, {"from": "gpt", "value": "orphan"}]},
        _conv(1),
    ]
    path = tmp_path / "types.json"
    path.write_text(json.dumps(rows))
    convs, report = load_conversations(str(path))
    assert _ids(convs) == ["c0_0", "c1_0"]
    assert report.dropped == {"wrong_type": 4, "missing_field": 3, "empty_conversation": 2,
                              "no_assistant_reply": 1}
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"},
                                  {"instruction": "a", "input": ""},
                                  {"instruction": ["a"], "input": "", "output": "b"},
                                  {"instruction": "a", "input": 3, "output": "b"},
                                  {"instruction": "a", "input": None, "output": "c"}]))
    convs, report = load_conversations(str(alpaca))
    assert len(convs) == 2 and report.dropped == {"missing_field": 1, "wrong_type": 2}


def test_invalid_utf8_is_dropped_only_where_it_matters(tmp_path):
    good = json.dumps(_conv(0)).encode()
    bad_text = json.dumps(_conv(1)).encode().replace(b"hello 1", b"hel\xff\xfelo 1")
    bad_meta = json.dumps({**_conv(2), "meta": "x"}).encode().replace(b'"x"', b'"\xc3\x28"')
    surrogate = json.dumps(_conv(3)).replace("hello 3", "hello \\ud800 3").encode()
    for name, body in (("u.json", b"[" + b",".join([good, bad_text, bad_meta, surrogate]) + b"]"),
                       ("u.jsonl", b"\n".join([good, bad_text, bad_meta, surrogate]) + b"\n")):
        path = tmp_path / name
        path.write_bytes(body)
        convs, report = load_conversations(str(path))
        # a bad byte in a field that is not trained on does not cost the record
        assert _ids(convs) == ["c0_0", "c2_0"], name
        assert report.dropped == {"invalid_utf8": 2}, name


def test_a_source_with_no_usable_record_fails_with_the_reasons(tmp_path):
    path = tmp_path / "hopeless.jsonl"
    path.write_text('{"conversations": []}\n{oops\n{"conversations": [{"from": "human", "value": "hi"}]}\n')
    with pytest.raises(DytuneError) as err:
        load_conversations(str(path))
    msg = str(err.value)
    assert "no usable conversation in 3 records" in msg
    assert "empty_conversation: 1" in msg and "malformed_json: 1" in msg and "no_assistant_reply: 1" in msg
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(DytuneError, match="no record found"):
        load_conversations(str(empty))
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x00\x01binary")
    with pytest.raises(DytuneError, match="malformed_json: 1"):
        load_conversations(str(garbage))


def test_corrupt_parquet_in_a_folder_is_skipped(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps([_conv(0), _conv(1)]))
    (folder / "b.parquet").write_bytes(b"PAR1 this is not parquet")
    (folder / "c.jsonl").write_text(json.dumps(_conv(2)) + "\n")
    convs, report = load_conversations(str(folder))
    assert _ids(convs) == ["c0_0", "c1_0", "c2_0"]
    assert report.dropped == {"unreadable_file": 1} and report.sources[0].files == 3


def test_report_saves_and_prints(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_conv(0)) + "\n{bad\n" + json.dumps({"conversations": []}) + "\n")
    convs, report = load_conversations(str(path))
    saved = report.save(tmp_path / "out")
    assert saved.name == "data_report.json"
    data = json.loads(saved.read_text())
    assert (data["read"], data["kept"], data["dropped"]) == (3, 1, {"empty_conversation": 1, "malformed_json": 1})
    assert data["sources"][0]["examples"]["malformed_json"][0].startswith("r.jsonl: line 2")
    table = report.table()
    assert "malformed_json" in table and "empty_conversation" in table and "conversations: 1" in table
