"""A tiny-model sweep of 2 models x 2 norms, end to end with the real trainer: train, eval, report; a rerun
skips the finished runs; a failing run is reported while the others finish."""

from __future__ import annotations

import json

import pytest
import yaml

from dytune.cli import main

CONVS = [{"id": f"c{i}", "messages": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
                                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}. " * (1 + i % 3)}]}
         for i in range(32)]
PLOTS = ("loss_chats.png", "perplexity.png", "grad_norm.png", "alpha.png", "learning_rate.png", "gap_vs_size.png")


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    pytest.importorskip("dytune.train", reason="dytune.train is not in this checkout")
    from dytune.testing import tiny_model, tiny_tokenizer

    root = tmp_path_factory.mktemp("e2e")
    models = []
    for name, layers in (("tiny-1l", 1), ("tiny-2l", 2)):
        tiny_model("llama", num_hidden_layers=layers).save_pretrained(root / name)
        tiny_tokenizer().save_pretrained(root / name)
        models.append(str(root / name))
    data = root / "chats.json"
    data.write_text(json.dumps(CONVS))
    spec = {
        "name": "e2e", "output_dir": str(root / "sweep"),
        "base": {"data": {"source": str(data), "val_fraction": 0.25, "max_length": 64,
                          "cache_dir": str(root / "cache")},
                 "mode": "full", "max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 1e-2,
                 "logging_steps": 1, "eval_steps": 2, "save_steps": 2, "report_to": "none", "disable_tqdm": True,
                 "alpha_init": "constant:0.5", "threads": 1},
        "grid": [{"model": models, "norm": ["layernorm", "dyt"]},
                 {"model": [str(root / "no-such-model")], "norm": ["dyt"]}],
        "steps": ["eval"], "eval": {"batch_size": 4},
    }
    path = root / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_tiny_sweep_end_to_end(sweep_file, capsys):
    sweep_dir = sweep_file.parent / "sweep"
    assert main(["sweep", str(sweep_file)]) == 1  # the missing model fails, the others finish
    out = capsys.readouterr().out
    assert "FAILED no-such-model_dyt: train:" in out
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["counts"] == {"finished": 4, "skipped": 0, "failed": 1, "pending": 0}
    for name in ("tiny-1l_ln", "tiny-1l_dyt", "tiny-2l_ln", "tiny-2l_dyt"):
        run = sweep_dir / name
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        assert (run / "final" / "config.json").is_file() and (run / "eval.json").is_file()
        # the eval step and training's own final validation see the same split and agree
        train_val = json.loads((run / "summary.json").read_text())["final_eval"]["eval_loss"]
        eval_val = json.loads((run / "eval.json").read_text())["models"][0]["assistant"]["loss"]
        assert eval_val == pytest.approx(train_val, rel=1e-3)
    report = sweep_dir / "report"
    for png in PLOTS:
        assert (report / png).stat().st_size > 5000, png
    md = (report / "report.md").read_text()
    assert "`no-such-model_dyt` (failed)" in md and "| tiny-2l_dyt | chats | tiny-2l |" in md
    assert (report / "report.html").stat().st_size > 2000

    # rerun: nothing retrained but the failed run
    assert main(["sweep", str(sweep_file), "--no-report"]) == 1
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["counts"] == {"finished": 0, "skipped": 4, "failed": 1, "pending": 0}

    # and `dytune report` on the sweep directory gives the same report
    assert main(["report", str(sweep_dir), "--out", str(sweep_file.parent / "rep")]) == 0
    assert {p.name for p in (sweep_file.parent / "rep").glob("*.png")} == set(PLOTS)
