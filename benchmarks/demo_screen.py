"""The demo's recovery step, screened: variants of its training on its own split and converted model.

    python benchmarks/demo_screen.py prepare                     # the demo's data, conversion and recovery config
    python benchmarks/demo_screen.py run lr-1.6e-4 --threads 1   # one variant (start several, one thread each)
    python benchmarks/demo_screen.py prepare calibration-32k     # a variant with its own `settings:` (conversion)
    python benchmarks/demo_screen.py collect                     # -> results/demo_recovery_screen.json + .png

`prepare` runs the demo's first steps (`dytune demo`'s data split, conversion and recovery config, from
`DemoSettings`) into --work. Each variant of `configs/benchmarks/demo_screen.yaml` is that config plus its keys,
trained with `dytune train` into --work/NAME; its validation set is the demo's 48 held-out conversations, so its
eval loss is the demo's "after recovery" number. A variant with `settings:` (`DemoSettings` fields, such as the
calibration size) trains from its own start, which `prepare NAME` writes into --work/NAME-start. `collect` reads
every variant's metrics.jsonl into the JSON (one curve of held-out CE against training tokens per variant;
variants of the file with no run here are kept) and plots it, every evaluation a point.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
VARIANTS = ROOT / "configs" / "benchmarks" / "demo_screen.yaml"


def prepare(work: Path, settings_overrides: dict | None = None) -> None:
    from dytune.experiments.demo import DemoSettings, convert_and_save, held_out_ce, prepare_data, recovery_config
    from dytune.data import tokenize_conversations
    from dytune.models import load_model, load_tokenizer

    settings = DemoSettings(**(settings_overrides or {}))
    train, held, counts = prepare_data(settings, work)
    tokenizer, model = load_tokenizer(settings.model), load_model(settings.model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    held_tok = tokenize_conversations(held, tokenizer, max_length=settings.max_length, train_on="assistant",
                                      cache_dir=False)
    original, _ = held_out_ce(model, held_tok, pad, "held-out CE, original")
    config = recovery_config(settings, work)
    convert_and_save(settings, config, model, tokenizer, train)
    before, _ = held_out_ce(model, held_tok, pad, "held-out CE, DyT before recovery")
    (work / "recovery.yaml").write_text(yaml.safe_dump(config.resolved(), sort_keys=False))
    (work / "start.json").write_text(json.dumps({"original_ce": original, "before_ce": before, **counts,
                                                 "settings": settings_overrides or {}}) + "\n")
    print(f"original {original:.4f}, DyT before recovery {before:.4f}; config {work / 'recovery.yaml'}")


def start_dir(work: Path, variant: dict, name: str) -> Path:
    """Where a variant's converted model and recovery config are: its own (`prepare NAME`) if it changes the demo's
    settings (`settings:`, e.g. the calibration size), else the shared one of `prepare`."""
    return work / f"{name}-start" if variant.get("settings") else work


def run(work: Path, names: list[str], screen: dict, threads: int | None) -> None:
    from dytune.train import TrainConfig, train

    for name in names:
        variant = screen["variants"][name]
        base = {**yaml.safe_load((start_dir(work, variant, name) / "recovery.yaml").read_text()),
                **screen.get("shared", {})}
        values = {**base, **variant["keys"], "output_dir": str(work / name), "overwrite": True,
                  "threads": threads, "disable_tqdm": True}
        train(TrainConfig(**values))


def curve(run_dir: Path) -> list[dict]:
    """(step, training tokens, held-out CE) at every evaluation of a run, one per step: the recovery benchmark's
    reading of a run directory (`collect_arm`)."""
    from dytune.experiments.recovery import collect_arm

    return [{"step": p["step"], "tokens": p["tokens"], "eval_loss": round(p["ce"], 4)}
            for p in collect_arm(run_dir, budget=0)["curve"]]


def collect(work: Path, screen: dict, out: Path) -> dict:
    variants = screen["variants"]
    result = json.loads(out.read_text()) if out.is_file() else {"variants": {}}
    start = json.loads((work / "start.json").read_text()) if (work / "start.json").is_file() else {}
    base = work / "recovery.yaml"
    for name, variant in variants.items():
        if (work / name / "metrics.jsonl").is_file():
            result["variants"][name] = {"description": variant["description"], "keys": variant["keys"],
                                        "base": screen["base"], "curve": curve(work / name)}
            if variant.get("settings"):  # its own conversion: keep its start
                result["variants"][name]["settings"] = variant["settings"]
                own = start_dir(work, variant, name) / "start.json"
                if own.is_file():
                    result["variants"][name]["before_ce"] = round(json.loads(own.read_text())["before_ce"], 4)
    if base.is_file():
        result["base_config_now"] = yaml.safe_load(base.read_text())
    if start:
        result["start_now"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in start.items()}
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def plot(result: dict, path: Path) -> None:
    """One panel per base recipe the variants were screened against."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    original = result.get("original_ce", 1.916)
    bases: dict[str, dict] = {}
    for name, variant in result["variants"].items():
        bases.setdefault(variant.get("base", "?"), {})[name] = variant
    fig, axes = plt.subplots(1, len(bases), figsize=(6.5 * len(bases), 5), sharey=True, squeeze=False)
    for ax, (base, variants) in zip(axes[0], reversed(bases.items())):  # the newest base first
        title = f"against {base}"
        for name, variant in variants.items():
            points = [p for p in variant["curve"] if p["tokens"]]
            if "before_ce" in variant:  # its own start, at 0 training tokens
                points = [{"tokens": 0, "eval_loss": variant["before_ce"]}, *points]
            ax.plot([p["tokens"] for p in points], [p["eval_loss"] for p in points], marker="o", ms=3, label=name)
        ax.axhline(original, color="grey", linestyle=":", linewidth=0.8, label="original model")
        ax.axhline(original + 1.0, color="grey", linestyle="--", linewidth=0.8, label="demo target: original + 1 nat")
        ax.set_xlabel("training tokens")
        ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("held-out ShareGPT CE, assistant tokens (nat)")
    fig.suptitle("SmolLM2-135M DyT: the demo's recovery step, screened (48 held-out conversations)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["prepare", "run", "collect"])
    p.add_argument("names", nargs="*", help="variants to run (run), or to prepare their own start (prepare: those "
                                            "with `settings:`)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "demo-screen")
    p.add_argument("--variants", type=Path, default=VARIANTS)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS / "demo_recovery_screen.json")
    args = p.parse_args(argv)
    screen = yaml.safe_load(args.variants.read_text())
    variants = screen["variants"]
    if args.action == "prepare":
        for name in args.names:
            if name not in variants:
                p.error(f"unknown variant {name!r}: {', '.join(variants)}")
            if not variants[name].get("settings"):
                p.error(f"{name!r} has no `settings:` in {args.variants}: it trains from the shared start")
        for name in args.names or [None]:
            work = start_dir(args.work, variants[name], name) if name else args.work
            work.mkdir(parents=True, exist_ok=True)
            prepare(work, variants[name]["settings"] if name else None)
    elif args.action == "run":
        unknown = [n for n in args.names if n not in variants]
        if unknown or not args.names:
            p.error(f"name variants of {args.variants}: {', '.join(variants)} (got {unknown or 'none'})")
        for name in args.names:
            start = start_dir(args.work, variants[name], name)
            if not (start / "recovery.yaml").is_file():
                again = f"prepare {name}" if start != args.work else "prepare"
                p.error(f"{start / 'recovery.yaml'} is missing: run `python {sys.argv[0]} {again}` first")
        run(args.work, args.names, screen, args.threads)
    else:
        plot(collect(args.work, screen, args.out), args.out.with_suffix(".png"))
        print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
