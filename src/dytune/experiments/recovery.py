"""The recovery benchmark's machinery (`benchmarks/recovery.py` is its command line; the arms are configs/recovery/).

    arms.yaml    base settings, DyT starting points (`sources`), arms (TrainConfig keys + a few of its own)
    prepare_data / convert_sources / arm_config / collect_arm / finish (gaps vs the original and the twin; table, plot)

An arm is a `dytune train` run; its result is rebuilt from its run directory (config.yaml, metrics.jsonl,
summary.json) by `collect_arm`, so arms run side by side, stopped or resumed read the same way.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from dytune._jsonio import read_json, read_jsonl, write_json
from dytune.errors import DytuneError
from dytune.experiments.runs import find_twin

# an arm's own keys (see arms.yaml); every other key is a TrainConfig key
ARM_KEYS = ("source", "twin", "local", "local_params", "alpaca_weight", "calibrate_on_training_alpaca")
NO_STEP_LIMIT = 10**6  # max_steps of an arm stopped by its token budget (arm_config), not by a step count
SOURCE_KEYS = ("calibration_records", "calibration_sharegpt")  # a source's own keys; the rest are ConvertConfig's


def load_arms(path: str | Path) -> dict[str, Any]:
    """arms.yaml -> {"base", "sources", "arms", "default"}; an arm naming an unknown source or twin is an error."""
    import yaml

    spec = yaml.safe_load(Path(path).read_text()) or {}
    arms, sources = spec.get("arms") or {}, spec.get("sources") or {}
    for name, arm in arms.items():
        if arm.get("source") and arm["source"] not in sources:
            raise DytuneError(f"{path}: arm {name} names source {arm['source']!r}, not one of {', '.join(sources)}")
        if arm.get("twin") and arm["twin"] not in arms:
            raise DytuneError(f"{path}: arm {name} names twin {arm['twin']!r}, which is not an arm")
    return {"base": spec.get("base") or {}, "sources": sources, "arms": arms,
            "default": spec.get("default") or list(arms)}


def prepare_data(work: Path, alpaca: Path, heldout_ids: Path, sharegpt_file: Path, heldout: int,
                 sharegpt_samples: int | None, alpaca_train: int, seed: int) -> dict:
    """Write the training conversations (ShareGPT `sharegpt_file` + Alpaca records) and the held-out Alpaca records
    as JSONL under `work`. The held-out ids are read from `heldout_ids` (written there, `heldout` random ones, if
    missing); the files are reused while their settings match (other arms may be reading them right now)."""
    from dytune.data import load_conversations

    alpaca_rows, _ = load_conversations(str(alpaca))
    if heldout_ids.is_file():
        held_ids = json.loads(heldout_ids.read_text())["ids"]
    else:
        ids = sorted(alpaca_rows["id"])
        random.Random(seed).shuffle(ids)
        held_ids = sorted(ids[:heldout], key=lambda i: int(i.rsplit("-", 1)[-1]))
        heldout_ids.parent.mkdir(parents=True, exist_ok=True)
        heldout_ids.write_text(json.dumps({"source": "alpaca_sample.json", "ids": held_ids,
                                           "note": "never trained on by benchmarks/recovery.py"}, indent=1) + "\n")
    settings = {"heldout_ids": held_ids, "sharegpt_samples": sharegpt_samples, "alpaca_train": alpaca_train,
                "seed": seed}
    record = work / "data.json"  # reuse the files while they match: other arms may be reading them right now
    saved = json.loads(record.read_text()) if record.is_file() else {}
    if saved.get("settings") == settings and all(Path(path).is_file() for path in saved["data"]["paths"].values()):
        return saved["data"]
    held = set(held_ids)
    rest = [i for i in range(len(alpaca_rows)) if alpaca_rows[i]["id"] not in held]
    random.Random(seed + 1).shuffle(rest)
    train_alpaca = alpaca_rows.select(sorted(rest[:alpaca_train]))
    val = alpaca_rows.select([i for i in range(len(alpaca_rows)) if alpaca_rows[i]["id"] in held])
    sharegpt, report = load_conversations(str(sharegpt_file), max_samples=sharegpt_samples, seed=seed, clean=True)
    work.mkdir(parents=True, exist_ok=True)
    paths = {"sharegpt": work / "sharegpt.jsonl", "alpaca_train": work / "alpaca_train.jsonl",
             "heldout": work / "heldout.jsonl"}
    for name, rows in (("sharegpt", sharegpt), ("alpaca_train", train_alpaca), ("heldout", val)):
        tmp = paths[name].with_suffix(".tmp")  # replaced atomically: a running arm never reads half a file
        rows.to_json(str(tmp), lines=True)
        os.replace(tmp, paths[name])
    if held & set(train_alpaca["id"]):
        raise AssertionError("a held-out record is in the training data")
    data = {"paths": {k: str(v) for k, v in paths.items()}, "sharegpt_conversations": len(sharegpt),
            "alpaca_train": len(train_alpaca), "heldout": len(val), "sharegpt_read": report.read}
    record.write_text(json.dumps({"settings": settings, "data": data}, indent=1) + "\n")
    return data


def calibration_texts(tokenizer: Any, alpaca: Path, heldout_ids: Path, records: int, sharegpt: int = 0,
                      work: Path | None = None) -> list[str]:
    """The first `records` Alpaca records that are not held out (+ the first `sharegpt` conversations of the
    training file), rendered with the chat template."""
    from dytune.conversion.calibration_data import render_chat
    from dytune.data import load_conversations

    rows_all, _ = load_conversations(str(alpaca))
    held = set(json.loads(heldout_ids.read_text())["ids"])
    rows = [row for row in rows_all if row["id"] not in held][:records]
    if sharegpt:
        chats, _ = load_conversations(str(work / "sharegpt.jsonl"))
        rows += list(chats.select(range(sharegpt)))
    return [render_chat(row["messages"], tokenizer) for row in rows]


def convert_sources(work: Path, model_name: str, sources: dict[str, dict], alpaca: Path, heldout_ids: Path,
                    ) -> dict[str, str]:
    """The DyT starting points the arms need, converted once per work directory and saved (`work/dyt-NAME`); arms
    distil from the original through `teacher:`. Returns {source: directory}."""
    import dytune
    from dytune.conversion import ConvertConfig

    out = {}
    if not sources:  # LayerNorm arms only: nothing to convert
        return out
    tokenizer = dytune.load_tokenizer(model_name)
    for name in sorted(sources):
        target = work / f"dyt-{name}"
        if not (target / "config.json").is_file():
            model = dytune.load_model(model_name)
            t = time.time()
            settings = {k: v for k, v in sources[name].items() if k not in SOURCE_KEYS}
            records = sources[name].get("calibration_records")
            texts = calibration_texts(tokenizer, alpaca, heldout_ids, records, sources[name].get(
                "calibration_sharegpt", 0), work) if records else None
            dytune.convert(model, ConvertConfig(**settings), tokenizer=tokenizer, calibration=texts,
                           source=model_name, progress=False)
            dytune.save(model, target, tokenizer, overwrite=True)
            print(f"converted {name} in {time.time() - t:.0f}s -> {target}", file=sys.stderr, flush=True)
        out[name] = str(target)
    return out


def arm_config(name: str, arm: dict, base: dict, data: dict, models: dict[str, str], settings: dict) -> dict:
    """The `TrainConfig` values of one arm. `settings`: the benchmark's run settings (model, work, max_length,
    batch, grad_accum, eval_every, threads, tokens, local_steps, local_lr, save_every, resume)."""
    spec = dict(arm)
    spec.pop("twin", None)
    local_params = spec.pop("local_params", "dyt")
    alpaca = data["paths"]["alpaca_train"] + (f":{spec.pop('alpaca_weight')}" if "alpaca_weight" in spec else "")
    local = spec.pop("local", False) and settings["local_steps"] > 0
    source = spec.pop("source", None)
    steps = spec.pop("max_steps", None)  # a schedule placed by the step count (lr_decay_fraction): steps, no budget
    model = models[source] if spec["norm"] == "dyt" and source else settings["model"]  # no source: converted here
    calibration_records = spec.pop("calibrate_on_training_alpaca", None)
    if calibration_records:
        spec.update(calibration=data["paths"]["alpaca_train"], calibration_samples=calibration_records)
    work = Path(settings["work"])
    values = dict(base, **spec)
    values.update(
        model=model, output_dir=str(work / name), overwrite=True, max_steps=steps or NO_STEP_LIMIT,
        max_train_tokens=0 if steps else settings["tokens"],
        data={"source": [data["paths"]["sharegpt"], alpaca],
              "val_source": data["paths"]["heldout"], "max_length": settings["max_length"], "seed": 0},
        per_device_train_batch_size=settings["batch"], gradient_accumulation_steps=settings["grad_accum"],
        eval_steps=settings["eval_every"], threads=settings["threads"])
    if settings["save_every"]:  # resumable: a run longer than a session continues with --resume
        values.update(save_strategy="steps", save_steps=settings["save_every"], save_total_limit=1)
    if settings["resume"]:
        from transformers.trainer_utils import get_last_checkpoint

        run = work / name
        if run.is_dir() and get_last_checkpoint(str(run)):
            values.update(overwrite=False, resume=True)
        else:  # nothing to resume: start afresh rather than append to an older run's files
            print(f"{name}: no checkpoint in {run}, starting from the beginning", file=sys.stderr, flush=True)
    if spec["norm"] == "dyt" and spec.get("distill") and source:
        values["teacher"] = settings["model"]  # converted in another process: distil from the original by name
    if local:
        values.update(local_distill_steps=settings["local_steps"], local_distill_lr=settings["local_lr"],
                      local_distill_params=local_params)
    return values


def original_ce(model_name: str, heldout: str, max_length: int) -> float:
    """Held-out CE of the original model (assistant tokens, token-weighted, as the arms' validation)."""
    import dytune
    from dytune.data import load_conversations, tokenize_conversations
    from dytune.eval.perplexity import token_loss

    tokenizer = dytune.load_tokenizer(model_name)
    model = dytune.load_model(model_name)
    held, _ = load_conversations(heldout)
    tokens = tokenize_conversations(held, tokenizer, max_length=max_length)
    return token_loss(model, tokens, batch_size=8, pad_id=tokenizer.pad_token_id or 0).loss


def collect_arm(run: Path, budget: int) -> dict:
    """An arm's result from its run directory: settings from config.yaml, the held-out curve from metrics.jsonl,
    the rest from summary.json. A run without a summary (killed, or still to be resumed) is marked partial."""
    import yaml

    if not (run / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{run} has no metrics.jsonl: that arm never ran in this work directory")
    rows = read_jsonl(run / "metrics.jsonl")
    summary = read_json(run / "summary.json") or {}
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
    # gradual removal: the mean gate the evaluation ran with (runs before eval_removal_gate was logged: the gate
    # the next training step logged, which trained at the same global step)
    next_gate = {r["step"] - 1: r["removal_gate"] for r in rows if "removal_gate" in r}
    curve = []
    for s, r in sorted(by_step.items()):
        point = {"step": s, "tokens": int(r.get("num_input_tokens_seen", 0)) + offset, "ce": r["eval_loss"]}
        gate = r.get("eval_removal_gate", next_gate.get(s))
        if gate:
            point["gate"] = gate
        curve.append(point)
    trained = [r for r in rows if "tokens" in r]
    settings = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    out = {"settings": {k: v for k, v in settings.items() if k != "data"}, "curve": curve,
           "local_distill": summary.get("local_distill"),
           "train_tokens": summary.get("train_tokens", trained[-1]["tokens"] if trained else 0),
           "steps": summary.get("global_step", rows[-1]["step"] if rows else 0),
           "skipped_steps": summary.get("skipped_steps", 0), "tokens_per_second": summary.get("tokens_per_second")}
    steps = settings.get("max_steps") or 0
    if steps and steps < NO_STEP_LIMIT:  # run by steps (arm_config): done at its last step, whatever the tokens
        if not summary or out["steps"] < steps:
            out["partial"] = f"stopped at step {out['steps']:,} of {steps:,}{'' if summary else why}"
    elif not summary or out["train_tokens"] < budget:
        out["partial"] = f"stopped at {out['train_tokens']:,} of {budget:,} training tokens{'' if summary else why}"
    return out


def finish(result: dict, out: Path, arms_spec: dict[str, dict]) -> None:
    """Gaps (vs the original, vs the twin at the same step), the table, the PNG. `arms_spec`: the arms' settings
    ({name: arm}, from arms.yaml) that say which arm is whose twin."""
    arms = result["arms"]
    base = result.get("original_ce")
    twin_specs = {name: arms_spec.get(name, {"norm": "dyt"}) for name in arms}
    for name, arm in arms.items():
        spec = arms_spec.get(name, {})
        twin_name = find_twin(spec, twin_specs) if spec.get("norm") == "dyt" else None
        twin = arms.get(twin_name or "")
        twin_by_step = {p["step"]: p["ce"] for p in twin["curve"]} if twin else {}
        for point in arm["curve"]:
            point["gap"] = point["ce"] - base if base is not None else None
            if point["step"] in twin_by_step:
                point["gap_vs_twin"] = point["ce"] - twin_by_step[point["step"]]
        last = arm["curve"][-1] if arm["curve"] else {}
        arm["final"] = {k: last.get(k) for k in ("tokens", "ce", "gap", "gap_vs_twin")}
        if last.get("gate"):
            arm["final"]["gate"] = last["gate"]
        arm["start"] = {k: arm["curve"][0].get(k) for k in ("tokens", "ce", "gap")} if arm["curve"] else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
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
        gate = f" (mean gate {f['gate']:.2f}: norms still mixed in)" if f.get("gate") else ""
        lines.append(f"| {name} | {fmt(s.get('gap'))} | {f.get('tokens') or 0:,} | {fmt(f.get('ce'))}{gate} | "
                     f"{fmt(f.get('gap'))} | {fmt(f.get('gap_vs_twin'))} |")
    return "\n".join(lines)


TARGET_GAP_VS_TWIN = 0.30  # issue 15: the DyT arm within 0.30 nat of its LayerNorm twin within 2M training tokens


def plot(result: dict, path: Path) -> None:
    """Two panels, every evaluation a point: the gap to the original model (every arm), and the gap to the LayerNorm
    twin at the same step (DyT arms whose twin ran), with the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    gated = False
    for index, (name, arm) in enumerate(result["arms"].items()):
        style = "--" if name.endswith("-twin") else (":" if name.startswith("lever") else "-")
        for ax, key in ((left, "gap"), (right, "gap_vs_twin")):  # one colour per arm in both panels
            points = [p for p in arm["curve"] if p.get(key) is not None]
            if not points:
                continue
            line, = ax.plot([p["tokens"] for p in points], [p[key] for p in points], marker="o", ms=3,
                            linestyle=style, label=name, color=f"C{index % 10}")
            mixed = [p for p in points if p.get("gate")]  # gradual removal: norms still mixed in (hollow)
            if mixed:
                gated = True
                ax.plot([p["tokens"] for p in mixed], [p[key] for p in mixed], marker="o", ms=5, linestyle="none",
                        markerfacecolor="white", color=line.get_color())
    right.axhline(TARGET_GAP_VS_TWIN, color="grey", linewidth=0.8, linestyle=":",
                  label=f"target {TARGET_GAP_VS_TWIN:.2f} nat")
    left.set_yscale("symlog", linthresh=0.1)  # twins go below the original, DyT arms start nats above it
    right.set_ylim(bottom=0)
    for ax, what in ((left, "the original"), (right, "its LayerNorm twin, same step")):
        ax.set_xlabel("training tokens (incl. block-wise distillation)")
        ax.set_ylabel(f"held-out CE - CE of {what} (nat)")
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    note = "; hollow: gradual removal not finished (norms still mixed in)" if gated else ""
    fig.suptitle(f"SmolLM2-135M: DyT recovery (held-out Alpaca, assistant tokens){note}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
