"""`dytune data`: summary table, data_report.json, tokenizer statistics, errors."""

from __future__ import annotations

import json

import pytest

from dytune.cli import main


@pytest.fixture
def tiny_model_dir(tmp_path):
    from dytune.testing import tiny_config, tiny_tokenizer

    path = tmp_path / "tiny-chat"
    tiny_tokenizer(chat_template=True).save_pretrained(path)
    tiny_config("llama").save_pretrained(path)
    return path


def test_summary_and_report(tmp_path, sharegpt_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversations": []}\n{oops\n'
                   '{"id": "z_0", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}\n')
    out = tmp_path / "out"
    assert main(["data", str(sharegpt_path), str(bad), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sharegpt_sample.json" in printed and "total" in printed
    assert "malformed_json" in printed and "empty_conversation" in printed
    report = json.loads((out / "data_report.json").read_text())
    assert (report["read"], report["kept"]) == (503, 501)
    assert report["dropped"] == {"empty_conversation": 1, "malformed_json": 1}
    assert [s["read"] for s in report["sources"]] == [500, 3]


def test_tokenizer_statistics_and_show(tmp_path, sharegpt_path, tiny_model_dir, capsys):
    out = tmp_path / "out"
    code = main(["data", str(sharegpt_path), "--tokenizer", str(tiny_model_dir), "--max-length", "64",
                 "--max-samples", "40", "--out", str(out), "--show", "1", "--save", "--no-cache"])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "data_report.json").read_text())
    tok = report["tokenized"]
    assert tok["examples"] + report["dropped"].get("no_trainable_tokens", 0) == 40
    assert 0 < tok["trainable_tokens"] < tok["tokens"] <= 64 * tok["examples"]
    assert f"tokens: {tok['tokens']:,}" in printed and "trainable tokens" in printed
    assert "«" in printed and "<|im_start|>assistant\n«" in printed  # trained text is marked
    assert (out / "conversations.jsonl").is_file() and (out / "tokenized").is_dir()
    assert len((out / "conversations.jsonl").read_text().splitlines()) == 40


def test_maps_and_format_flags(tmp_path, capsys):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")
    out = tmp_path / "o"
    assert main(["data", str(path), "--format", "alpaca", "--field-map", "instruction=question,output=answer",
                 "--out", str(out), "--save"]) == 0
    row = json.loads((out / "conversations.jsonl").read_text())
    assert row["messages"] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert main(["data", str(path), "--field-map", "nonsense"]) == 2
    assert "is not key=value" in capsys.readouterr().err


def test_errors_exit_2_with_a_message(tmp_path, capsys, mtbench_path):
    assert main(["data", str(tmp_path / "missing.json")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["data", str(mtbench_path), "--out", str(tmp_path)]) == 2
    assert "cannot tell the data format" in capsys.readouterr().err
