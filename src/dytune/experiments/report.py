"""The comparison report: `dytune report RUN_DIR... --out DIR` -> report.md, report.html, report.json, PNGs.

    from dytune.experiments import build_report
    result = build_report(["runs/sweep"], "runs/sweep/report")
    print(result["markdown"], result["headline"])

Numbers: validation loss is the mean cross-entropy (nats) per labelled token of the held-out conversations
(training's own validation split), perplexity its exponential. The gap is DyT minus its LayerNorm twin, the
run with the same model, data, mode, seed and other settings (> 0: DyT is worse).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from dytune.errors import DytuneError
from dytune.experiments import plots
from dytune.experiments.document import Document
from dytune.experiments.runs import NORM_LABELS, Run, find_runs, twins


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def _steps(run: Run) -> int | None:
    value = run.summary.global_step if run.summary and run.summary.global_step else None
    if value is None:
        steps = [r["step"] for r in run.metrics if "step" in r]
        value = max(steps) if steps else None
    return int(value) if value is not None else None


def _size(value: float | None) -> str:
    if not value:
        return "-"
    return f"{value / 1e6:.1f}M" if value >= 1e6 else f"{value / 1e3:.0f}k"


def final_rows(runs: list[Run]) -> list[dict]:
    """One row per run: facets and final numbers, with the gap to the LayerNorm twin."""
    pairs = twins(runs)
    rows = []
    for run in runs:
        twin = pairs.get(run.name)
        gap = None
        if twin is not None and run.val_loss is not None and twin.val_loss is not None:
            gap = run.val_loss - twin.val_loss
        win = run.win_rate
        rows.append({
            "run": run.name, "path": str(run.path), "status": _status(run), **run.params,
            "steps": _steps(run), "val_loss": run.val_loss, "val_perplexity": run.val_ppl,
            "gap_vs_layernorm": gap, "layernorm_twin": twin.name if twin else None,
            "tokens_per_s": run.tokens_per_s, "decode_tokens_per_s": run.decode_tokens_per_s,
            "win_rate": win[0] if win else None, "win_rate_ci95": list(win[1:]) if win else None,
            "judge": (run.judge or {}).get("judge"), "parameters": run.parameters,
        })
    return rows


def _status(run: Run) -> str:
    sweep_status = (run.sweep or {}).get("status")
    stopped = run.summary is not None and not run.summary.finished
    if run.error or sweep_status == "failed" or stopped:
        return "failed"
    return "finished" if run.finished else "unfinished"


def gap_points(runs: list[Run], rows: list[dict]) -> list[dict]:
    keys = plots.varying(runs, exclude=("norm", "dataset", "seed", "model"))
    by_name = {r.name: r for r in runs}
    points = []
    for row in rows:
        if row["gap_vs_layernorm"] is None:
            continue
        run = by_name[row["run"]]
        setting = plots.setting_label(run, keys)
        points.append({"group": run.dataset + (f", {setting}" if setting else ""), "parameters": row["parameters"],
                       "gap": row["gap_vs_layernorm"], "model": run.model})
    return points


def headline(rows: list[dict]) -> dict:
    """Mean gap per dataset and overall; best DyT run per dataset."""
    gaps = [r["gap_vs_layernorm"] for r in rows if r["gap_vs_layernorm"] is not None]
    per_dataset: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["gap_vs_layernorm"] is not None:
            per_dataset[str(r.get("dataset"))].append(r["gap_vs_layernorm"])
    wins = [r["win_rate"] for r in rows if r["win_rate"] is not None]
    return {"runs": len(rows), "finished": sum(r["status"] == "finished" for r in rows),
            "failed": [r["run"] for r in rows if r["status"] == "failed"],
            "pairs": len(gaps), "mean_gap": sum(gaps) / len(gaps) if gaps else None,
            "mean_gap_per_dataset": {d: sum(v) / len(v) for d, v in sorted(per_dataset.items())},
            "mean_win_rate": sum(wins) / len(wins) if wins else None}


def _table(doc: Document, runs: list[Run], rows: list[dict]) -> None:
    extra = plots.varying(runs, exclude=("model", "norm", "dataset", "mode", "seed"))
    headers = ["run", "dataset", "model", "params", "mode", "norm", *extra, "seed", "steps", "val loss", "val ppl",
               "DyT - LN", "train tokens/s"]
    show_decode = any(r["decode_tokens_per_s"] is not None for r in rows)
    show_win = any(r["win_rate"] is not None for r in rows)
    if show_decode:
        headers.append("decode tokens/s")
    if show_win:
        judge = next(r["judge"] for r in rows if r["win_rate"] is not None) or "judge"
        headers.append(f"win rate vs LN ({judge}, 95% CI)")
    body = []
    order = sorted(rows, key=lambda r: (str(r.get("dataset")), r["parameters"] or 0, str(r.get("model")),
                                        str(r.get("mode")), str(r.get("seed")), r.get("norm") != "layernorm"))
    for r in order:
        gap = r["gap_vs_layernorm"]
        cells = [r["run"] + ("" if r["status"] == "finished" else f" ({r['status']})"), r.get("dataset"),
                 r.get("model"), _size(r["parameters"]), r.get("mode"), NORM_LABELS.get(r.get("norm"), r.get("norm")),
                 *[r.get(k, "-") for k in extra], r.get("seed"), r["steps"] if r["steps"] is not None else "-",
                 _fmt(r["val_loss"]), _fmt(r["val_perplexity"], 2), "-" if gap is None else f"{gap:+.4f}",
                 _fmt_rate(r["tokens_per_s"])]
        if show_decode:
            cells.append(_fmt_rate(r["decode_tokens_per_s"]))
        if show_win:
            w, ci = r["win_rate"], r["win_rate_ci95"]
            cells.append("-" if w is None else f"{w:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]")
        body.append(cells)
    numeric = {headers.index(h) for h in headers if h in ("params", "steps", "val loss", "val ppl", "DyT - LN",
                                                          "train tokens/s", "decode tokens/s")}
    doc.table(headers, body, numeric)


def build_report(paths: list[str | Path] | None = None, out: str | Path = "report", *, runs: list[Run] | None = None,
                 title: str = "dytune report: LayerNorm vs DyT", intro: list[str] | None = None,
                 extra=None, gap: bool = True) -> dict:
    """Read runs, draw the figures, write `report.md`, `report.html` and `report.json` into `out`.

    extra: a callable `(doc, out_dir) -> None` that adds sections before the runs' (the demo's).
    gap: include the gap-against-model-size section.
    Returns {"markdown", "html", "json", "figures", "rows", "headline"}.
    """
    runs = runs if runs is not None else find_runs(list(paths or []))
    if not runs and extra is None:
        raise DytuneError("no runs to report on")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = final_rows(runs)
    head = headline(rows)
    doc = Document(title)
    for text in intro or []:
        doc.para(text)
    if extra is not None:
        extra(doc, out_dir)
    figures: list[Path] = []
    if runs:
        _runs_sections(doc, runs, rows, head, out_dir, figures, gap)
    md, page = doc.write(out_dir)
    data = {"headline": head, "rows": rows, "figures": [p.name for p in figures]}
    (out_dir / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    return {"markdown": md, "html": page, "json": out_dir / "report.json", "figures": figures, "rows": rows,
            "headline": head}


def _runs_sections(doc: Document, runs: list[Run], rows: list[dict], head: dict, out_dir: Path,
                   figures: list[Path], gap: bool = True) -> None:
    n_fail = len(head["failed"])
    doc.heading("Runs")
    summary = (f"{head['runs']} runs: {head['finished']} finished"
               + (f", {n_fail} failed" if n_fail else "")
               + (f", {head['runs'] - head['finished'] - n_fail} unfinished" if head['runs'] - head['finished'] - n_fail
                  else "") + ".")
    if head["mean_gap"] is not None:
        summary += (f" Over {head['pairs']} DyT / LayerNorm pair(s), DyT's validation loss is "
                    f"{head['mean_gap']:+.4f} nats from LayerNorm's on average (> 0: DyT worse).")
    doc.para(summary)
    doc.para("Validation loss: mean cross-entropy in nats per labelled token of the held-out conversations "
             "(training's own validation split); perplexity = exp(loss). **DyT - LN**: a DyT run's validation loss "
             "minus that of its LayerNorm twin (same model, data, mode, seed and other settings). Train tokens/s: "
             "training throughput; decode tokens/s: `dytune bench`; win rate: the DyT model's MT-bench answers "
             "judged against its LayerNorm twin's, ties counted half.")
    _table(doc, runs, rows)
    if head["mean_gap_per_dataset"]:
        doc.bullets([f"**{d}**: mean DyT - LN gap {g:+.4f} nats" for d, g in head["mean_gap_per_dataset"].items()])

    doc.heading("Training curves")
    for path in plots.loss_curves(runs, out_dir):
        figures.append(path)
        doc.image(path, f"Train cross-entropy (solid; without distillation terms) and validation loss (dashed) against "
                        f"optimizer steps, LayerNorm (blue) "
                        f"vs DyT (orange): {path.stem.removeprefix('loss_')}", out_dir)
    for fn, name, caption in (
        (plots.perplexity_per_epoch, "perplexity.png", "Validation perplexity per epoch (colour: LayerNorm blue, "
                                                       "DyT orange; line style: setting)"),
        (plots.grad_norms, "grad_norm.png", "Gradient norm before clipping, per optimizer step"),
        (plots.alpha_trajectories, "alpha.png", "alpha of every DyT layer during training (mean over channels), "
                                                "coloured by depth from the first layer (dark) to the last (yellow)"),
        (plots.learning_rates, "learning_rate.png", "Learning rate schedules"),
    ):
        path = fn(runs, out_dir / name)
        if path is None:
            doc.para(f"*No data for: {caption.split(',')[0].split('(')[0].strip().lower()} (the runs did not log it).*")
            continue
        figures.append(path)
        doc.image(path, caption, out_dir)

    if gap:
        _gap_section(doc, runs, rows, out_dir, figures)

    problems = [r for r in runs if _status(r) != "finished"]
    if problems:
        doc.heading("Failed and unfinished runs")
        items = []
        for run in problems:
            message = ((run.sweep or {}).get("error") or run.error or (run.summary.error if run.summary else None)
                       or "no summary.json (interrupted or running)")
            items.append(f"`{run.name}` ({_status(run)}): {message.strip().splitlines()[-1][:300]}")
        doc.bullets(items)


def _gap_section(doc: Document, runs: list[Run], rows: list[dict], out_dir: Path, figures: list[Path]) -> None:
    doc.heading("Gap against model size")
    points = gap_points(runs, rows)
    path = plots.gap_vs_size(points, out_dir / "gap_vs_size.png")
    if path is None:
        doc.para("*No DyT run has a finished LayerNorm twin with a known model size: no gap to plot.*")
        return
    figures.append(path)
    sizes = {p["parameters"] for p in points}
    note = "" if len(sizes) > 1 else " Only one model size is in these runs: the trend needs more."
    doc.image(path, "DyT - LayerNorm validation loss against model parameters (mean over seeds; dots: seeds)."
              + note, out_dir)
