"""`dytune.train(config)`: load, convert, choose what trains, distil, train with Trainer, save.

Run directory (`output_dir`):
    config.yaml        every resolved setting (re-runnable: `dytune train RUN/config.yaml`)
    data_report.json   what the data pipeline kept and dropped
    metrics.jsonl      one JSON line per log: loss, grad_norm (before clipping), learning_rate, tokens_per_second,
                       ce/kl parts, alpha/<layer>; and eval_loss / eval_ppl every eval_steps
    runs/              TensorBoard events (report_to: tensorboard)
    checkpoint-N/      Trainer checkpoints (model incl. DyT, optimizer, scheduler, RNG, data position),
                       written aside and renamed into place
    base/              LoRA modes: the model the adapter applies to (DyT-converted, before training)
    adapter/           LoRA modes: the adapter (LoRA + trained norms), base_model_name_or_path -> base/
    final/             the trained model (LoRA merged), loadable by `dytune.load`
    summary.json       outcome, numbers, paths
"""

from __future__ import annotations

import copy
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dytune.errors import DytuneError
from dytune.train.config import TrainConfig, parse_config


def _log(cfg: TrainConfig, message: str) -> None:
    if cfg.process_index == 0:
        print(f"dytune train: {message}", file=sys.stderr, flush=True)


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _resume_checkpoint(cfg: TrainConfig, run: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if cfg.resume_from_checkpoint:
        if not Path(cfg.resume_from_checkpoint).is_dir():
            raise DytuneError(f"resume_from_checkpoint {cfg.resume_from_checkpoint} is not a directory")
        return cfg.resume_from_checkpoint
    last = get_last_checkpoint(str(run)) if run.is_dir() else None
    # Every process decides from the same, untouched directory; only then does the first one change it.
    holds_run = run.is_dir() and bool(last or (run / "final").exists() or (run / "metrics.jsonl").exists())
    _barrier()
    if cfg.resume:
        if last is None:
            _log(cfg, f"resume: no checkpoint in {run}, starting from the beginning")
        return last
    if holds_run and not cfg.overwrite:
        raise DytuneError(f"{run} already holds a run: pass --resume to continue it, --overwrite to start "
                          "again, or another --output_dir")
    if cfg.overwrite and run.is_dir() and cfg.process_index == 0:
        shutil.rmtree(run)
    _barrier()
    return None


def _prepare_model(cfg: TrainConfig, tokenizer: Any):  # noqa: ANN202
    """Load, convert (norm: dyt) and find the teacher. Returns (model, conversion report, originals, teacher)."""
    from dytune.convert import convert
    from dytune.hf_registration import is_dyt_model
    from dytune.models import load_model
    from dytune.train.teacher import FrozenTeacher, OriginalNorms
    from dytune.train.trainable import norm_module_names

    model = load_model(cfg.model, attn_implementation=cfg.attn_implementation)
    model.train()
    report = originals = teacher = None
    loaded_dyt = is_dyt_model(model)
    if cfg.norm == "layernorm" and loaded_dyt:
        raise DytuneError(f"{cfg.model} is a DyT model: norm: layernorm needs the unconverted model")
    frozen_copy = None
    linear_refit = cfg.norm == "dyt" and not loaded_dyt and cfg.alpha_init == "calibrated" \
        and cfg.calibration_refit == "linear"
    if cfg.distill and cfg.teacher is None and (cfg.mode == "full" or linear_refit):
        # every weight trains, or the linear refit changes base weights: the teacher must be a separate copy
        frozen_copy = copy.deepcopy(model)
    if cfg.norm == "dyt" and not loaded_dyt:
        calibration = None
        if cfg.calibration:
            from dytune.calibration_data import calibration_texts_from_source

            calibration = calibration_texts_from_source(cfg.calibration, tokenizer, cfg.calibration_samples)
        report = convert(model, alpha_init=cfg.alpha_init, norms=cfg.norms, per_channel=cfg.per_channel,
                         keep_affine=cfg.keep_affine, tokenizer=tokenizer, calibration=calibration,
                         calibration_method=cfg.calibration_method, calibration_refit=cfg.calibration_refit,
                         sink_weight=cfg.sink_weight, refit_ridge=cfg.refit_ridge,
                         refit_ridge_to=cfg.refit_ridge_to,
                         progress=cfg.process_index == 0)
        model.config.dyt["source"] = cfg.model
        # after a linear refit the original norms no longer give the original model: only the frozen copy does
        originals = None if linear_refit else OriginalNorms.from_converted(model)
    elif cfg.norm == "layernorm" and cfg.distill and cfg.mode != "full":
        originals = OriginalNorms.snapshot(model, norm_module_names(model, "layernorm"))
    if cfg.removal_schedule((), ()).active and originals is None:
        raise DytuneError("gradual removal (removal_ramp_steps / removal_hold_steps) needs the original norms: give "
                          "the unconverted model and norm: dyt (and a calibration_refit other than linear)")
    if cfg.distill:
        if cfg.teacher is not None:
            teacher = FrozenTeacher(load_model(cfg.teacher, attn_implementation=cfg.attn_implementation))
        elif frozen_copy is not None:
            teacher = FrozenTeacher(frozen_copy)
        elif originals is not None:
            teacher = originals  # same frozen weights, original norms, adapters off: no second copy
        else:
            raise DytuneError(f"{cfg.model} was converted in another process, so its original norms are not here: "
                              "set teacher: to the original model to distil from it")
    return model, report, originals, teacher


def _base_config(model: Any) -> Any:
    from dytune.train.teacher import _base

    return _base(model).config


def train(config: TrainConfig | dict | str | Path, *, callbacks: list | None = None, **overrides: Any) -> dict:
    """Run a training job; returns the summary (also written to `output_dir/summary.json`).

    `callbacks`: extra `transformers.TrainerCallback`s."""
    if isinstance(config, (str, Path)):
        cfg = parse_config(config, [], **overrides)
    elif isinstance(config, dict):
        cfg = parse_config(None, [], **{**config, **overrides})
    else:
        cfg = config
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from transformers import set_seed

    from dytune.data.templates import resize_embeddings
    from dytune.models import load_tokenizer
    from dytune.saving import save, write_model_card
    from dytune.train.callbacks import MetricsJsonl
    from dytune.train.collate import PadCollator
    from dytune.train.outputs import save_adapter, set_generation_eos, write_json
    from dytune.train.teacher import FrozenTeacher
    from dytune.train.trainable import apply_mode, classify_parameters
    from dytune.train.trainer import DytuneTrainer, NonFiniteError, alpha_values

    started = time.time()
    run = Path(cfg.output_dir)
    main = cfg.process_index == 0
    checkpoint = _resume_checkpoint(cfg, run)
    run.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)
    spec = cfg.data_spec()
    if not spec.source:
        raise DytuneError("no training data: set data (a file, folder, glob or Hub id, or a mapping with source:)")
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    with cfg.main_process_first(desc="tokenizing"):  # the first process fills the tokenization cache
        train_ds, val_ds, data_report = spec.prepare(tokenizer)
    if main:
        data_report.save(run)
        import yaml

        (run / "config.yaml").write_text(yaml.safe_dump(cfg.resolved(), sort_keys=False))
    if val_ds is None or len(val_ds) == 0:
        cfg.eval_strategy = "no"
        val_ds = None

    model, conversion, originals, teacher = _prepare_model(cfg, tokenizer)
    extra = [n for n in resize_embeddings(model, tokenizer) if n] if len(tokenizer) > model.get_input_embeddings(
    ).weight.shape[0] else []
    collator = PadCollator(pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    local = None
    if cfg.local_distill_steps and checkpoint is None:
        from torch.utils.data import DataLoader

        from dytune.train.local import local_distill

        gen = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(train_ds.select_columns(["input_ids", "attention_mask", "labels"]),
                            batch_size=cfg.per_device_train_batch_size, shuffle=True, generator=gen,
                            collate_fn=collator)
        _log(cfg, f"block-wise distillation: {cfg.local_distill_steps} steps")
        if (teacher or originals) is None:
            raise DytuneError("local_distill_steps needs the original model: convert here (norm: dyt on the "
                              "unconverted model; with calibration_refit: linear also distill: true) or set teacher:")
        local = local_distill(model, teacher or originals, loader, steps=cfg.local_distill_steps,
                              lr=cfg.local_distill_lr, params=cfg.local_distill_params, progress=main)

    lora = cfg.mode in ("lora", "lora+dyt")
    base_dir = run / "base"
    if cfg.local_distill_steps and checkpoint is not None and lora and (base_dir / "model.safetensors").is_file():
        # the adapter checkpoint does not hold base weights that the block-wise stage changed: base/ does
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(base_dir / "model.safetensors")), strict=False)
    if lora and main and not (base_dir / "config.json").is_file():
        save(model, base_dir, tokenizer, overwrite=True)  # the adapter's base: DyT as converted, before training
    set_generation_eos(model, tokenizer, spec.chat_template)
    result = apply_mode(model, cfg.mode, cfg.norm, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                        lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_target_modules, extra_trainable=extra)
    trainable: dict[str, int] = {}
    named = dict(result.model.named_parameters())
    for name, group in classify_parameters(result.model).items():
        trainable[group] = trainable.get(group, 0) + named[name].numel()
    removal = None
    if cfg.norm == "dyt":
        kinds = {layer["name"]: layer["kind"] for layer in _base_config(result.model).dyt["layers"]}
        removal = cfg.removal_schedule(result.norm_names, [kinds[n] for n in result.norm_names])
        if removal.active and cfg.max_steps > 0 and removal.total_steps > cfg.max_steps:
            raise DytuneError(f"the removal schedule needs {removal.total_steps} steps ({len(removal.site_groups())} "
                              f"groups x {removal.steps_per_group}) but max_steps is {cfg.max_steps}: the saved "
                              "model would be DyT with norms never removed in training; shorten the schedule")

    trainer = DytuneTrainer(model=result.model, args=cfg, train_dataset=train_ds, eval_dataset=val_ds,
                            data_collator=collator, processing_class=tokenizer, dytune_config=cfg, teacher=teacher,
                            norm_names=result.norm_names, originals=originals, removal=removal,
                            callbacks=[MetricsJsonl(run / "metrics.jsonl"), *(callbacks or [])])
    if isinstance(teacher, FrozenTeacher) and trainer.is_fsdp_enabled:
        teacher.shard(cfg.device)  # the full-mode teacher copy is sharded too (UNVERIFIED until run on GPUs)
    if checkpoint is not None:
        import json

        step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
        if main:
            MetricsJsonl.truncate_after(run / "metrics.jsonl", step)
        _log(cfg, f"resuming from {checkpoint} (step {step})")

    summary: dict[str, Any] = {"status": "running", "run_dir": str(run), "model": cfg.model, "norm": cfg.norm,
                               "mode": cfg.mode, "distill": cfg.distill, "resumed_from": checkpoint,
                               "world_size": trainer.accelerator.num_processes}
    try:
        output = trainer.train(resume_from_checkpoint=checkpoint)
    except NonFiniteError as err:
        if main:
            write_json(run / "summary.json", {**summary, "status": "stopped: non-finite", "error": str(err),
                                              "global_step": trainer.state.global_step})
        raise
    trainer.clear_stage_hooks()
    final_eval = trainer.evaluate() if val_ds is not None else {}

    # -- outputs ---------------------------------------------------------------------------------------------
    adapter_dir = None
    if lora:
        if main:
            adapter_dir = save_adapter(trainer.model, run / "adapter", base_dir)
        merged = trainer.model.merge_and_unload()  # after the adapter is saved: merging changes the weights
    else:
        merged = trainer.accelerator.unwrap_model(trainer.model)
    if main:
        save(merged, run / "final", tokenizer, overwrite=True,
             card_extra=f"- Post-trained with `dytune train` (mode {cfg.mode}, distill {cfg.distill}, "
                        f"{trainer.state.num_input_tokens_seen} tokens, {trainer.state.global_step} steps)")
        if not (run / "final" / "README.md").exists():
            write_model_card(merged, run / "final")
    summary.update({
        "status": "completed",
        "global_step": trainer.state.global_step,
        "train_tokens": int(trainer.state.num_input_tokens_seen),
        "train_loss": output.training_loss,
        "train_runtime_s": output.metrics.get("train_runtime"),
        "tokens_per_second": (int(trainer.state.num_input_tokens_seen) / output.metrics["train_runtime"]
                              if output.metrics.get("train_runtime") else None),
        "skipped_steps": trainer.skipped_steps,
        "trainable_parameters": trainable,
        "final_eval": final_eval,
        "alpha": alpha_values(merged, result.norm_names),
        "conversion": None if conversion is None else {"alpha_init": conversion.alpha_init,
                                                       "layers": len(conversion.converted)},
        "local_distill": local,
        "eos_token_id": merged.generation_config.eos_token_id if merged.generation_config else None,
        "final": str(run / "final"), "adapter": str(adapter_dir) if adapter_dir else None,
        "base": str(base_dir) if lora else None,
        "wall_time_s": time.time() - started,
    })
    if main:
        write_json(run / "summary.json", summary)
    _barrier()
    return summary
