"""`dytune report RUN_DIR... --out DIR`: Markdown + HTML comparison report with plots, LayerNorm vs DyT.

    dytune report runs/sweep --out runs/sweep/report
    dytune report runs/ln-run runs/dyt-run --out report/
"""

from __future__ import annotations

import argparse


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(
        name, help="compare runs: loss curves, perplexity, grad norms, alpha, final table, gap vs size (MD + HTML)",
        description="Read run directories (or sweep directories holding them) and write report.md, report.html, "
                    "report.json and PNG plots into --out: train/validation loss per dataset, perplexity per "
                    "epoch, grad norms, alpha per DyT layer, a final table (val loss, perplexity, DyT - LN gap, "
                    "tokens/s, win rate) and the gap against model size.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories, or sweep directories (their run subdirectories)")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--title", default="dytune report: LayerNorm vs DyT")
    p.set_defaults(func=run)


def run(args) -> int:
    from dytune.experiments.report import build_report

    result = build_report(args.runs, args.out, title=args.title)
    head = result["headline"]
    print(f"report: {result['markdown']} and {result['html']} ({len(result['figures'])} plots)")
    print(f"{head['runs']} runs, {head['finished']} finished" + (f", {len(head['failed'])} failed" if head["failed"]
                                                                  else ""))
    if head["mean_gap"] is not None:
        print(f"mean DyT - LayerNorm validation loss gap over {head['pairs']} pair(s): {head['mean_gap']:+.4f} nats")
    return 0
