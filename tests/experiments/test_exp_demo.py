"""`dytune demo`: the pipeline on a tiny model (fast), the failure when recovery brings nothing, and the real
fast demo on the embedded SmolLM2-135M (slow, run in CI)."""

from __future__ import annotations

import json
import re

import pytest

from dytune.experiments.demo import DemoSettings, RecoveryFailed, run_demo

CONVS = [{"id": f"q{i}_0", "messages": [{"role": "user", "content": f"Give me tip number {i} for staying healthy."},
                                        {"role": "assistant", "content": ["Eat a balanced diet.", "Exercise daily.",
                                                                          "Sleep well.", "Drink water."][i % 4] * 2}]}
         for i in range(40)]
QUESTIONS = [{"question_id": 81, "category": "writing", "turns": ["Write a haiku.", "Now another one."]},
             {"question_id": 82, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]}]


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    pytest.importorskip("dytune.train", reason="dytune.train is not in this checkout")
    from dytune.testing import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("demo")
    tiny_model("llama").save_pretrained(root / "tiny")
    tiny_tokenizer().save_pretrained(root / "tiny")
    (root / "convs.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CONVS))
    (root / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return root


def tiny_settings(root, **overrides):
    values = dict(model=str(root / "tiny"), data=str(root / "convs.jsonl"), questions_file=str(root / "questions.jsonl"),
                  conversations=40, val_fraction=0.2, max_length=64, calibration_texts=4, calibration_tokens=256,
                  steps=8, batch_size=4, eval_every=4, questions=1, max_new_tokens=8, threads=1,
                  overrides={"learning_rate": 1e-2})
    values.update(overrides)
    return DemoSettings(**values)


def test_demo_pipeline_on_a_tiny_model(tiny_setup, tmp_path):
    out = tmp_path / "demo"
    result = run_demo(tiny_settings(tiny_setup), out)
    ce = result.ce
    assert ce["dyt_after"] < ce["dyt_before"]
    # held-out conversations never reach calibration or training
    train_ids = {json.loads(line)["id"] for line in (out / "data" / "convs.jsonl").read_text().splitlines()}
    held_ids = {json.loads(line)["id"] for line in (out / "data" / "convs-heldout.jsonl").read_text().splitlines()}
    assert held_ids and not train_ids & held_ids and len(train_ids | held_ids) == 40
    config = (out / "recovery" / "config.yaml").read_text()
    assert "convs-heldout.jsonl" in config and "teacher: " in config
    # the demo's CE and training's own validation loss measure the same thing
    assert result.train_val_loss == pytest.approx(ce["dyt_after"], rel=1e-3)
    demo = json.loads((out / "demo.json").read_text())
    assert demo["ce"] == ce and demo["conversations"]["held_out"] == len(held_ids)
    md = (out / "report" / "report.md").read_text()
    assert "## Held-out cross-entropy" in md and f"{ce['dyt_after']:.4f}" in md and "## MT-bench answers" in md
    assert "Write a haiku." in md and md.count("*DyT, after recovery*:") == 2  # both turns of question 81
    for png in ("held_out_ce.png", "loss_convs.png", "alpha.png", "grad_norm.png"):
        assert (out / "report" / png).stat().st_size > 5000, png
    assert "held-out CE" in result.headline() and "recovery gain" in result.headline()


def test_demo_fails_loudly_without_a_gain(tiny_setup, tmp_path):
    out = tmp_path / "demo"
    with pytest.raises(RecoveryFailed, match="recovery did not help"):
        run_demo(tiny_settings(tiny_setup, steps=2, eval_every=2,
                               overrides={"learning_rate": 0.0, "reconstruct_steps": 0}), out)
    assert (out / "report" / "report.md").is_file()  # the report is written before failing, to show why
    demo = json.loads((out / "demo.json").read_text())
    assert demo["ce"]["dyt_after"] == pytest.approx(demo["ce"]["dyt_before"])


@pytest.mark.slow
def test_fast_demo_on_the_embedded_model(tmp_path, capsys):
    """What CI runs: `dytune demo --fast` on SmolLM2-135M and the real ShareGPT file, offline."""
    from dytune.cli import main

    assert main(["demo", "--fast", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'demo' / 'report' / 'report.md'}" in out
    values = dict(re.findall(r"(original model|before recovery|after recovery)\s+([0-9.]+)", out))
    assert float(values["after recovery"]) < float(values["before recovery"])
    assert (tmp_path / "demo" / "report" / "held_out_ce.png").stat().st_size > 5000
