"""`dytune report`: run directories written by hand -> Markdown, HTML, JSON and every plot."""

from __future__ import annotations

import json
import math

import pytest

from dytune.cli import main
from dytune.errors import DytuneError
from dytune.experiments.report import build_report
from dytune.experiments.runs import canonical, find_runs, load_run, twins

SIZES = {"EleutherAI/pythia-70m": 70.4e6, "EleutherAI/pythia-410m": 405.3e6}


def write_run(root, name, *, model="EleutherAI/pythia-70m", norm="dyt", data="alpaca.json", mode="lora", seed=0,
              steps=40, finished=True, error=None, gap=0.3, config_name="config.json"):
    """A run directory as `dytune train` leaves it: config, metrics.jsonl (HF key spellings), summary.json."""
    run = root / name
    run.mkdir(parents=True)
    config = {"model": model, "norm": norm, "mode": mode, "seed": seed, "data": {"source": data},
              "output_dir": str(run)}
    if config_name.endswith(".json"):
        (run / config_name).write_text(json.dumps(config))
    else:
        import yaml

        (run / config_name).write_text(yaml.safe_dump(config))
    offset = gap * 70.4e6 / SIZES.get(model, 70.4e6) if norm == "dyt" else 0.0
    lines = []
    for step in range(1, steps + 1):
        rec = {"step": step, "epoch": 2 * step / steps, "loss": 3 * math.exp(-step / 15) + 1.5 + offset,
               "grad_norm": 1 + 1 / step, "learning_rate": 1e-4 * (1 - step / steps), "tokens_per_s": 900.0}
        if norm == "dyt":
            rec.update({f"alpha/model.layers.{i}.input_layernorm": 0.5 + 0.1 * i + 0.01 * step for i in range(4)})
        lines.append(json.dumps(rec))
        if step % 10 == 0:
            val = 3 * math.exp(-step / 15) + 1.6 + offset
            lines.append(json.dumps({"step": step, "epoch": 2 * step / steps, "eval_loss": val,
                                     "eval_perplexity": math.exp(val)}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"step\": 41, \"lo")  # torn last line
    if finished:
        (run / "summary.json").write_text(json.dumps({"status": "completed", "global_step": steps,
                                                      "final_eval": {"eval_loss": val, "eval_ppl": math.exp(val)},
                                                      "tokens_per_second": 900.0, "num_parameters": SIZES.get(model)}))
    if error:
        (run / "error.txt").write_text(error)
    return run


@pytest.fixture
def study(tmp_path):
    root = tmp_path / "sweep"
    for model in SIZES:
        for data in ("alpaca.json", "sharegpt.json"):
            for norm in ("layernorm", "dyt"):
                write_run(root, f"{model.split('/')[1]}_{norm}_{data[:-5]}", model=model, norm=norm, data=data)
    write_run(root, "pythia-70m_dyt_alpaca_full", mode="full", finished=False,
              error="step train failed\nRuntimeError: out of memory")
    return root


def test_canonical_metric_spellings():
    assert canonical({"step": 3, "loss": 2.0, "grad_norm": 1.5, "learning_rate": 1e-4}) == {
        "step": 3, "train_loss": 2.0, "grad_norm": 1.5, "lr": 1e-4}
    # dytune's distillation runs log the CE part beside the total objective: the curve is the CE
    assert canonical({"step": 4, "loss": 9.0, "ce": 7.0, "kl": 4.0}) == {"step": 4, "train_loss": 7.0,
                                                                         "train_objective": 9.0}
    val = canonical({"step": 5, "eval_loss": 1.0})
    assert val["val_loss"] == 1.0 and val["val_ppl"] == pytest.approx(math.e) and "train_loss" not in val
    split = canonical({"global_step": 7, "split": "val", "loss": 2.0, "perplexity": 7.4})
    assert split == {"step": 7, "val_loss": 2.0, "val_ppl": 7.4}
    alpha = canonical({"step": 1, "alpha": {"a": 0.5, "b": [1.0, 3.0]}, "alpha/c": 0.7})
    assert alpha["alpha"] == {"a": 0.5, "b": 2.0, "c": 0.7}


def test_load_run_reads_config_metrics_summary(tmp_path):
    run = load_run(write_run(tmp_path, "r", config_name="config.yaml"))
    assert run.params["model"] == "pythia-70m" and run.norm == "dyt" and run.dataset == "alpaca"
    assert run.finished and run.val_loss == pytest.approx(json.loads((run.path / "summary.json").read_text())["final_eval"]["eval_loss"])
    steps, losses = run.series("train_loss")
    assert len(steps) == 40 and steps[0] == 1  # the torn last line is skipped
    assert len(run.alpha_series()) == 4
    assert run.parameters == 70.4e6


def test_twins_pair_same_settings(study):
    runs = find_runs([study])
    pairs = twins(runs)
    assert pairs["pythia-70m_dyt_alpaca"].name == "pythia-70m_layernorm_alpaca"
    assert "pythia-70m_dyt_alpaca_full" not in pairs  # full fine-tuning has no LayerNorm twin here


def test_report_files_table_and_plots(study, tmp_path):
    out = tmp_path / "report"
    result = build_report([study], out)
    names = {p.name for p in result["figures"]}
    assert names == {"loss_alpaca.png", "loss_sharegpt.png", "perplexity.png", "grad_norm.png", "alpha.png",
                     "learning_rate.png", "gap_vs_size.png"}
    for path in result["figures"]:
        assert path.stat().st_size > 5000, path
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for name in names:
        assert f"({name})" in md and f'src="{name}"' in page
    # the gap shrinks with size in the made-up data: +0.3 at 70M, smaller at 410M
    rows = {r["run"]: r for r in result["rows"]}
    assert rows["pythia-70m_dyt_alpaca"]["gap_vs_layernorm"] == pytest.approx(0.3, abs=1e-6)
    assert 0 < rows["pythia-410m_dyt_alpaca"]["gap_vs_layernorm"] < 0.1
    assert rows["pythia-70m_layernorm_alpaca"]["gap_vs_layernorm"] is None
    assert "| pythia-70m_dyt_alpaca | alpaca | pythia-70m | 70.4M | lora | DyT | 0 | 40 |" in md
    assert "+0.3000" in md and "<table>" in page and "<td class=\"num\">+0.3000</td>" in page
    # the failed run is listed with its error
    assert result["headline"]["failed"] == ["pythia-70m_dyt_alpaca_full"]
    assert "`pythia-70m_dyt_alpaca_full` (failed): RuntimeError: out of memory" in md
    data = json.loads((out / "report.json").read_text())
    assert data["headline"]["pairs"] == 4


def test_report_cli_and_win_rate_and_missing_data(tmp_path, capsys):
    ln = write_run(tmp_path / "runs", "ln", norm="layernorm")
    dyt = write_run(tmp_path / "runs", "dyt", norm="dyt")
    (dyt / "judge.json").write_text(json.dumps({"judge": "pairrm", "summary": {"overall": {
        "win_rate": 0.4, "ci95": [0.3, 0.5], "win": 3, "tie": 2, "loss": 5, "n": 10}}}))
    (dyt / "bench.json").write_text(json.dumps({"results": [{"model": "x", "decode_tok_s": {"median": 55.5}}]}))
    assert main(["report", str(ln), str(dyt), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "mean DyT - LayerNorm validation loss gap over 1 pair(s): +0.3000 nats" in out
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "win rate vs LN (pairrm, 95% CI)" in md and "0.400 [0.30, 0.50]" in md and "55.5" in md
    # no size known for a local model: the gap-vs-size plot is replaced by a sentence
    (tmp_path / "runs2").mkdir()
    for norm in ("layernorm", "dyt"):
        write_run(tmp_path / "runs2", norm, model="/nowhere/tiny", norm=norm)
    result = build_report([tmp_path / "runs2"], tmp_path / "rep2")
    assert "gap_vs_size.png" not in {p.name for p in result["figures"]}
    assert "no gap to plot" in (tmp_path / "rep2" / "report.md").read_text()


def test_report_errors(tmp_path):
    with pytest.raises(DytuneError, match="not a directory"):
        build_report([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DytuneError, match="neither a run directory"):
        build_report([tmp_path / "empty"], tmp_path / "out")


def test_report_on_a_shell_glob_of_a_sweep_directory(study, tmp_path):
    (study / "configs").mkdir()
    (study / "configs" / "x.yaml").write_text("model: m\n")
    (study / "sweep_summary.json").write_text("{}")
    runs = find_runs(sorted(study.iterdir()))  # what `dytune report runs/sweep/*` passes
    assert len(runs) == 9 and "configs" not in {r.name for r in runs}
    with pytest.raises(DytuneError, match="no run directory"):
        find_runs([study / "configs", study / "sweep_summary.json"])
