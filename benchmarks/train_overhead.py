"""Training-loop overhead: dytune's Trainer against a plain Hugging Face Trainer, same model, data and process.

    python benchmarks/train_overhead.py                   # SmolLM2-135M, writes benchmarks/results/train_overhead.json
    python benchmarks/train_overhead.py --steps 6 --rounds 2 --model smollm2-135m --seq 128

Three arms, interleaved round by round so that load from other jobs on a shared machine hits them alike:
  plain      transformers.Trainer, the model's own loss, the same collator and optimizer (AdamW)
  dytune     DytuneTrainer (parameter groups, own CE, alpha/tokens-per-second logging, NaN guard) on the same
             LayerNorm/RMSNorm model: any difference is the loop's overhead (target: at most 5%)
  dytune-dyt the same on the DyT-converted model: the cost of DyT itself against the norm it replaced
Each arm runs `--steps` optimizer steps per round from the same initial weights; the first step of every run is
dropped (warm-up). Step time is a median over rounds; CPU seconds per step (one thread) are recorded too, being
steadier than wall time when other processes share the cores. Logging every step is the worst case for dytune
(alpha of every layer is read at each log).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "train_overhead.json"
ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_sample.json"


class StepTimer:
    """Trainer callback: wall and CPU time of every optimizer step."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
                timer._start = (time.perf_counter(), time.process_time())

            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                timer.wall.append(time.perf_counter() - timer._start[0])
                timer.cpu.append(time.process_time() - timer._start[1])

        self.callback = _CB()
        self.wall: list[float] = []
        self.cpu: list[float] = []


def _dataset(tokenizer, n: int, seq: int):  # noqa: ANN001
    from dytune.data import load_conversations, tokenize_conversations

    convs, _ = load_conversations(str(ALPACA), max_samples=n, seed=0)
    return tokenize_conversations(convs, tokenizer, max_length=seq, cache_dir=False)


def _args(kind: str, out: str, steps: int, batch: int, logging_steps: int):  # noqa: ANN202
    common = dict(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4,
                  logging_steps=logging_steps, save_strategy="no", eval_strategy="no", report_to="none",
                  disable_tqdm=True, seed=0, use_cpu=not torch.cuda.is_available(), remove_unused_columns=False,
                  optim="adamw_torch", dataloader_num_workers=0, include_num_input_tokens_seen="non_padding")
    if kind == "plain":
        from transformers import TrainingArguments

        return TrainingArguments(**common)
    from dytune.train import TrainConfig

    return TrainConfig(mode="full", norm="layernorm", threads=None, **common)


def _run(kind: str, model, dataset, collator, tokenizer, args, norm_names):  # noqa: ANN001, ANN202
    from transformers import Trainer

    from dytune.train.trainer import DytuneTrainer

    timer = StepTimer()
    if kind == "plain":
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                          processing_class=tokenizer, callbacks=[timer.callback])
    else:
        trainer = DytuneTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                                processing_class=tokenizer, dytune_config=args, norm_names=norm_names,
                                callbacks=[timer.callback])
    trainer.train()
    return timer.wall[1:], timer.cpu[1:], int(trainer.state.num_input_tokens_seen)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--logging-steps", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import tempfile

    import dytune
    from dytune.train.collate import PadCollator
    from dytune.train.trainable import norm_module_names

    tokenizer = dytune.load_tokenizer(args.model)
    base = dytune.load_model(args.model)
    base.train()
    dataset = _dataset(tokenizer, args.batch * (args.steps + 1), args.seq)
    collator = PadCollator(tokenizer.pad_token_id or 0)
    dyt_model = copy.deepcopy(base)
    dytune.convert(dyt_model, alpha_init="paper", progress=False)  # step time does not depend on alpha
    dyt_model.train()
    dyt_names = norm_module_names(dyt_model, "dyt")
    ln_names = norm_module_names(base, "layernorm")
    base_state = copy.deepcopy(base.state_dict())
    dyt_state = copy.deepcopy(dyt_model.state_dict())
    arms = {"plain": [], "dytune": [], "dytune-dyt": []}
    cpu = {k: [] for k in arms}
    tokens = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for kind in arms:
                model = dyt_model if kind == "dytune-dyt" else base
                model.load_state_dict(dyt_state if kind == "dytune-dyt" else base_state)
                train_args = _args("plain" if kind == "plain" else "dytune", tmp, args.steps, args.batch,
                                   args.logging_steps)
                torch.set_num_threads(args.threads)  # TrainConfig(threads=None) leaves it; Trainer may not
                wall, cpu_s, tokens[kind] = _run(kind if kind == "plain" else "dytune", model, dataset, collator,
                                                 tokenizer, train_args, dyt_names if kind == "dytune-dyt" else ln_names)
                arms[kind].extend(wall)
                cpu[kind].extend(cpu_s)
                print(f"round {r} {kind}: median step {statistics.median(wall):.3f}s wall, "
                      f"{statistics.median(cpu_s):.3f}s cpu", file=sys.stderr, flush=True)
    tokens_per_step = tokens["dytune"] / args.steps  # non-padding tokens, the same batches in every arm
    result: dict = {"machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(),
                                "torch": torch.__version__, "device": "cpu"},
                    "settings": vars(args), "tokens_per_step": tokens_per_step, "arms": {}}
    for kind in arms:
        med, med_cpu = statistics.median(arms[kind]), statistics.median(cpu[kind])
        result["arms"][kind] = {"median_step_s": med, "median_step_cpu_s": med_cpu,
                                "tokens_per_s": tokens_per_step / med, "tokens_per_cpu_s": tokens_per_step / med_cpu,
                                "steps_timed": len(arms[kind])}
    a = result["arms"]
    result["dytune_overhead_pct"] = {
        "wall": 100 * (a["dytune"]["median_step_s"] / a["plain"]["median_step_s"] - 1),
        "cpu": 100 * (a["dytune"]["median_step_cpu_s"] / a["plain"]["median_step_cpu_s"] - 1)}
    result["dyt_vs_norm_pct"] = {
        "wall": 100 * (a["dytune-dyt"]["median_step_s"] / a["dytune"]["median_step_s"] - 1),
        "cpu": 100 * (a["dytune-dyt"]["median_step_cpu_s"] / a["dytune"]["median_step_cpu_s"] - 1)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("dytune_overhead_pct", "dyt_vs_norm_pct")}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
