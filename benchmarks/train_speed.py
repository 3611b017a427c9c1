"""Recovery training throughput: variants of the demo's training step, side by side.

    python benchmarks/train_speed.py --steps 30            # each variant 30 steps, alternating in blocks of 10

The variants (`configs/benchmarks/train_speed.yaml`) are `dytune train` keys on top of one set-up: the `recover`
recipe (full fine-tuning, CE + KL from the original, bf16) from the recovery benchmark's linear-refit start, on
its ShareGPT file at the demo's size (batch 4 x 192). They alternate in blocks of `--block` steps, each resumed
from its checkpoint, so that all see the same machine load; the result is each variant's median training tokens/s
and its ratio to the first variant, with the mean loss over the steps all variants ran (a speed change must not
be a different computation). Writes benchmarks/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bf16 import StopAt  # noqa: E402 - the same stop-and-checkpoint callback


def run_block(name: str, keys: dict, args: argparse.Namespace, data: dict, until: int, resume: bool) -> None:
    from dytune.train import TrainConfig, train

    values = dict(model=args.start, teacher=args.model, per_device_train_batch_size=4,
                  data={"source": data["sharegpt"], "max_length": 192, "seed": 0, "val_fraction": 0.0})
    values.update(keys)  # a variant may change the shared set-up (the batch) too
    train(TrainConfig.from_recipe(
        "recover", output_dir=str(args.work / name), overwrite=not resume, resume=resume, max_steps=args.steps,
        logging_steps=1, save_strategy="steps", save_steps=args.block, save_total_limit=1, eval_strategy="no",
        report_to="none", disable_tqdm=True, seed=0, threads=args.threads, **values), callbacks=[StopAt(until)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--start", default=None, help="DyT start (default: the recovery work dir's dyt-ours-linear)")
    p.add_argument("--variants", type=Path, default=ROOT / "configs" / "benchmarks" / "train_speed.yaml")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "train-speed")
    p.add_argument("--recovery-work", type=Path, default=ROOT / "runs" / "recovery")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--block", type=int, default=10, help="steps per alternation block")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_speed.json")
    p.add_argument("--summarize-only", action="store_true", help="train nothing: summarise the runs in --work")
    args = p.parse_args(argv)

    from dytune.train.callbacks import read_metrics

    variants = yaml.safe_load(args.variants.read_text())["variants"]
    data = json.loads((args.recovery_work / "data.json").read_text())["data"]["paths"]
    args.start = args.start or str(args.recovery_work / "dyt-ours-linear")
    if not (Path(args.start) / "config.json").is_file():
        p.error(f"{args.start} is not a model directory: run benchmarks/recovery.py --arms recover first (it "
                "converts dyt-ours-linear), or pass --start")
    if not args.summarize_only:
        for until in range(args.block, args.steps + 1, args.block):
            for name, keys in variants.items():
                run_block(name, keys, args, data, until, resume=until > args.block)
    rows = {name: [r for r in read_metrics(args.work / name / "metrics.jsonl") if "loss" in r] for name in variants}
    steps = min(len(rs) for rs in rows.values())  # a stopped run: the steps all have
    speed = {name: statistics.median(r["tokens_per_second"] for r in rs[:steps] if r.get("tokens_per_second"))
             for name, rs in rows.items()}
    reference = next(iter(variants))
    result = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "steps": steps,
        "variants": variants, "reference": reference, "tokens_per_second": speed,
        "speedup": {name: s / speed[reference] for name, s in speed.items()},
        "loss_mean": {name: statistics.mean(r["loss"] for r in rs[:steps]) for name, rs in rows.items()},
        "loss": {name: [r["loss"] for r in rs[:steps]] for name, rs in rows.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("steps", "tokens_per_second", "speedup", "loss_mean")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
