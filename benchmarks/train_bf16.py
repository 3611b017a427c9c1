"""bf16 mixed precision on CPU for recovery training: the same run in float32 and under bf16 autocast, side by side.

    python benchmarks/train_bf16.py --steps 50          # ~2 x 50 steps of the recovery set-up

One full fine-tuning run with distillation from a frozen copy of the original (the recovery benchmark's set-up:
SmolLM2-135M, batch 4 x 512, its data files), from the same DyT start, same data order and seed, once in
float32 and once with `bf16: true` (CPU autocast: matmuls in bf16 on AMX, DyT parameters and arithmetic in
float32). The two runs alternate in blocks of `--block` steps (resumed from their checkpoints) so that both
see the same machine load. Reports training tokens/s of each, the per-step loss difference against the
float32 run's own step-to-step noise, and whether every alpha moved. The float32 run is the path before bf16
work (eager loss); the bf16 run is the bf16 path as `bf16: true` trains: autocast, the frozen teacher's weights
in bf16, CE and KL compiled (`compile_loss`). Writes benchmarks/results/train_bf16.json.

On a CPU without AMX or AVX512-BF16 (`machine.bf16_is_fast` in the JSON), compare with what `bf16: auto` trains
there instead: `--float32-loss compiled --out benchmarks/results/train_bf16_no_amx.json`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]


def run_block(name: str, args: argparse.Namespace, data: dict, start: str, until: int, resume: bool) -> None:
    from dytune.train import TrainConfig, train

    train(TrainConfig(
        model=start, teacher=args.model, norm="dyt", mode="full", distill=True, learning_rate=args.lr,
        bf16=(name == "bf16"), compile_loss=(name == "bf16" or args.float32_loss == "compiled"), output_dir=str(args.work / name), overwrite=not resume, resume=resume,
        max_steps=args.steps, data={"source": [data["sharegpt"], data["alpaca_train"]], "max_length": 512,
                                    "seed": 0, "val_fraction": 0.0},
        per_device_train_batch_size=4, lr_scheduler_type="constant_with_warmup", warmup_steps=2,
        weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="steps", save_steps=args.block,
        save_total_limit=1, eval_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        threads=args.threads), callbacks=[StopAt(until)])


class StopAt(TrainerCallback):
    """Stop after optimizer step `until`, with a checkpoint there (the next block resumes from it)."""

    def __init__(self, until: int) -> None:
        self.until = until

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 - Trainer's signature
        if state.global_step >= self.until:
            control.should_training_stop = True
            control.should_save = True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--start", default=None, help="DyT start directory (default: the recovery work dir's dyt-ours)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bf16")
    p.add_argument("--recovery-work", type=Path, default=ROOT / "runs" / "recovery")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--block", type=int, default=10, help="steps per alternation block")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--float32-loss", choices=("eager", "compiled"), default="eager",
                   help="the float32 run's loss: eager (the path before bf16 work) or compiled (what `bf16: auto` "
                        "trains on a CPU without fast bf16)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_bf16.json")
    p.add_argument("--summarize-only", action="store_true",
                   help="train nothing: summarise the runs already in --work (the steps both have)")
    args = p.parse_args(argv)

    from dytune.eval.speed import machine_info
    from dytune.train.callbacks import read_metrics

    data = json.loads((args.recovery_work / "data.json").read_text())["data"]["paths"]
    start = args.start or str(args.recovery_work / "dyt-ours")
    if not (Path(start) / "config.json").is_file():
        p.error(f"{start} is not a model directory: run benchmarks/recovery.py --arms ours-full first (it converts "
                "dyt-ours), or pass --start")
    if not args.summarize_only:
        for until in range(args.block, args.steps + 1, args.block):
            for name in ("float32", "bf16"):
                run_block(name, args, data, start, until, resume=until > args.block)
    rows = {name: [r for r in read_metrics(args.work / name / "metrics.jsonl") if "loss" in r]
            for name in ("float32", "bf16")}
    steps = min(len(rows["float32"]), len(rows["bf16"]))  # a stopped run: the steps both have
    rows = {name: rs[:steps] for name, rs in rows.items()}
    loss = {name: [r["loss"] for r in rs] for name, rs in rows.items()}
    speed = {name: statistics.median(r["tokens_per_second"] for r in rs if r.get("tokens_per_second"))
             for name, rs in rows.items()}
    diffs = [b - f for f, b in zip(loss["float32"], loss["bf16"])]
    noise = statistics.median(abs(b - a) for a, b in zip(loss["float32"], loss["float32"][1:]))
    alphas = {name: {k: rs[-1][k] for k in rs[-1] if k.startswith("alpha/")} for name, rs in rows.items()}
    first = {k: v for k, v in rows["bf16"][0].items() if k.startswith("alpha/")}
    result = {
        "machine": {**machine_info("cpu"), "threads": args.threads},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "steps": steps,
        "tokens_per_second": speed, "speedup_bf16": speed["bf16"] / speed["float32"],
        "loss": loss, "loss_diff_mean": statistics.mean(diffs), "loss_diff_max_abs": max(abs(d) for d in diffs),
        "float32_step_to_step_median_abs": noise,
        "alpha_moved_bf16": sum(alphas["bf16"][k] != first[k] for k in first), "alphas": len(first),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("tokens_per_second", "speedup_bf16", "loss_diff_mean",
                                             "loss_diff_max_abs", "float32_step_to_step_median_abs",
                                             "alpha_moved_bf16", "alphas")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
