"""`dytune.train(config)`: the training recipe, as named steps (torchtune's recipe `setup()`):

    _setup_data         tokenizer, train / validation sets, data_report.json, config.yaml
    _setup_model        load; convert to DyT (norm: dyt) with `config.convert_config()`
    _setup_teacher      the original model to distil from: original norms by hooks, or a frozen copy
    _fit_embeddings     embeddings grown to the tokenizer's new tokens; the padding collator
    _setup_local_stage  block-wise distillation before training (local_distill_steps)
    _setup_reconstruction  sequential block reconstruction before training (reconstruct_steps)
    _setup_trainer      what trains (mode), the removal schedule, the Trainer and its callbacks
    _write_outputs      final/ (model card), adapter/, summary.json (`RunSummary`)

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
from dytune.train.summary import RunSummary


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


class TrainRecipe:
    """One training run: `TrainRecipe(cfg).run()` (what `train()` does)."""

    def __init__(self, cfg: TrainConfig, callbacks: list | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.output_dir)
        self.main = cfg.process_index == 0
        self.extra_callbacks = list(callbacks or [])
        self.conversion = None  # dytune.conversion.Conversion, when this run converts the model
        self.originals = None  # OriginalNorms: the norms before conversion (teacher, gradual removal)
        self.teacher = None
        self.local = None  # the block-wise stage's summary
        self.reconstruction = None  # the sequential reconstruction's summary

    # -- steps ---------------------------------------------------------------------------------------------
    def _setup_data(self) -> None:
        from dytune.models import load_tokenizer

        cfg = self.cfg
        self.spec = cfg.data_spec()
        if not self.spec.source:
            raise DytuneError("no training data: set data (a file, folder, glob or Hub id, or a mapping with source:)")
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
        with cfg.main_process_first(desc="tokenizing"):  # the first process fills the tokenization cache
            self.train_ds, val_ds, data_report = self.spec.prepare(self.tokenizer)
        if self.main:
            import yaml

            data_report.save(self.run_dir)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.resolved(), sort_keys=False))
        if val_ds is None or len(val_ds) == 0:
            cfg.eval_strategy = "no"
            val_ds = None
        self.val_ds = val_ds

    def _setup_model(self) -> None:
        from dytune.conversion.model import convert
        from dytune.hf_registration import is_dyt_model
        from dytune.models import load_model
        from dytune.train.teacher import OriginalNorms
        from dytune.train.trainable import norm_module_names

        cfg = self.cfg
        model = load_model(cfg.model, attn_implementation=cfg.attn_implementation)
        model.train()
        loaded_dyt = is_dyt_model(model)
        if cfg.norm == "layernorm" and loaded_dyt:
            raise DytuneError(f"{cfg.model} is a DyT model: norm: layernorm needs the unconverted model")
        converting = cfg.norm == "dyt" and not loaded_dyt
        linear_refit = converting and cfg.convert_config().refit == "linear"
        self.frozen_copy = None
        if cfg.distill and cfg.teacher is None and (cfg.mode == "full" or linear_refit):
            # every weight trains, or the linear refit changes base weights: the teacher must be a separate copy
            self.frozen_copy = copy.deepcopy(model)
        if converting:
            self.conversion = convert(model, cfg.convert_config(), tokenizer=self.tokenizer, source=cfg.model,
                                      progress=self.main)
            # after a linear refit the original norms no longer give the original model: only the frozen copy does
            self.originals = None if linear_refit else OriginalNorms(self.conversion.originals)
        elif cfg.norm == "layernorm" and cfg.distill and cfg.mode != "full":
            self.originals = OriginalNorms.snapshot(model, norm_module_names(model, "layernorm"))
        if cfg.removal_schedule((), ()).active and self.originals is None and not (
                cfg.distill and (cfg.teacher is not None or self.frozen_copy is not None)):
            raise DytuneError("gradual removal (removal_ramp_steps / removal_hold_steps) needs the original model: "
                              "convert in this run (norm: dyt on the unconverted model), or distill: true with "
                              "teacher: the original model")
        self.model = model

    def _setup_teacher(self) -> None:
        from dytune.models import load_model
        from dytune.train.teacher import FrozenTeacher

        cfg = self.cfg
        if not cfg.distill:
            return
        if cfg.teacher is not None:
            self.teacher = FrozenTeacher(load_model(cfg.teacher, attn_implementation=cfg.attn_implementation))
        elif self.frozen_copy is not None:
            self.teacher = FrozenTeacher(self.frozen_copy)
        elif self.originals is not None:
            self.teacher = self.originals  # same frozen weights, original norms, adapters off: no second copy
        else:
            raise DytuneError(f"{cfg.model} was converted in another process, so its original norms are not here: "
                              "set teacher: to the original model to distil from it")
        self.frozen_copy = None

    def _fit_embeddings(self) -> None:
        """Grow the embeddings to a tokenizer with more tokens (a chat template's new special tokens); they train."""
        from dytune.data.templates import resize_embeddings
        from dytune.train.collate import PadCollator

        model, tokenizer = self.model, self.tokenizer
        grow = len(tokenizer) > model.get_input_embeddings().weight.shape[0]
        self.new_embeddings = [n for n in resize_embeddings(model, tokenizer) if n] if grow else []
        pad = tokenizer.pad_token_id
        self.collator = PadCollator(pad_id=pad if pad is not None else 0)

    def _setup_local_stage(self, checkpoint: str | None) -> None:
        cfg = self.cfg
        if not cfg.local_distill_steps or checkpoint is not None:
            return
        from torch.utils.data import DataLoader

        from dytune.train.local import local_distill

        gen = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(self.train_ds.select_columns(["input_ids", "attention_mask", "labels"]),
                            batch_size=cfg.per_device_train_batch_size, shuffle=True, generator=gen,
                            collate_fn=self.collator)
        _log(cfg, f"block-wise distillation: {cfg.local_distill_steps} steps")
        if (self.teacher or self.originals) is None:
            raise DytuneError("local_distill_steps needs the original model: convert here (norm: dyt on the "
                              "unconverted model; with calibration_refit: linear also distill: true) or set teacher:")
        self.local = local_distill(self.model, self.teacher or self.originals, loader, steps=cfg.local_distill_steps,
                                   lr=cfg.local_distill_lr, params=cfg.local_distill_params, progress=self.main)

    def _setup_reconstruction(self, checkpoint: str | None) -> None:
        """Sequential block reconstruction (dytune.train.reconstruct) on the first `reconstruct_tokens` of the
        training data, before end-to-end training."""
        cfg = self.cfg
        if not cfg.reconstruct_steps or checkpoint is not None:
            return
        from torch.utils.data import DataLoader

        from dytune.train.reconstruct import reconstruct_blocks

        original = self.teacher or self.originals
        if original is None:
            raise DytuneError("reconstruct_steps needs the original model: convert here (norm: dyt on the unconverted "
                              "model), or set teacher:")
        if self.teacher is not None and self.teacher is self.originals:
            raise DytuneError("reconstruct_steps trains whole blocks, so the distillation teacher must be a separate "
                              "copy: use mode: full, or set teacher: to the original model")
        gen = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(self.train_ds.select_columns(["input_ids", "attention_mask"]),
                            batch_size=cfg.per_device_train_batch_size, shuffle=True, generator=gen,
                            collate_fn=self.collator)
        _log(cfg, f"sequential block reconstruction: {cfg.reconstruct_steps} steps per block on up to "
                  f"{cfg.reconstruct_tokens} tokens")
        self.reconstruction = reconstruct_blocks(
            self.model, original, loader, steps_per_block=cfg.reconstruct_steps, lr=cfg.reconstruct_lr,
            max_grad_norm=cfg.reconstruct_max_grad_norm, sink_weight=cfg.reconstruct_sink_weight,
            max_tokens=cfg.reconstruct_tokens, progress=self.main)

    def _setup_trainer(self, checkpoint: str | None) -> None:
        from dytune.saving import save
        from dytune.train.callbacks import MetricsJsonl, TokenBudget
        from dytune.train.outputs import set_generation_eos
        from dytune.train.teacher import FrozenTeacher
        from dytune.train.trainable import (apply_mode, classify_parameters, freeze_early_layers,
                                            freeze_zero_multipliers)
        from dytune.train.trainer import DytuneTrainer

        cfg, model, run = self.cfg, self.model, self.run_dir
        self.lora = cfg.mode in ("lora", "lora+dyt")
        self.base_dir = run / "base"
        if (cfg.local_distill_steps or cfg.reconstruct_steps) and checkpoint is not None and self.lora \
                and (self.base_dir / "model.safetensors").is_file():
            # the adapter checkpoint does not hold base weights that the stages before training changed: base/ does
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(self.base_dir / "model.safetensors")), strict=False)
        if self.lora and self.main and not (self.base_dir / "config.json").is_file():
            save(model, self.base_dir, self.tokenizer, overwrite=True)  # the adapter's base: DyT before training
        set_generation_eos(model, self.tokenizer, self.spec.chat_template)
        gates = self._removal_gates(model)
        result = apply_mode(model, cfg.mode, cfg.norm, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                            lora_dropout=cfg.lora_dropout, lora_targets=cfg.lora_target_modules,
                            extra_trainable=self.new_embeddings)
        self.norm_names = result.norm_names
        if cfg.frozen_depth:
            if self.new_embeddings:
                raise DytuneError("frozen_depth freezes the input embeddings, but the chat template added tokens "
                                  "whose embeddings must train: use a tokenizer that has them, or frozen_depth: 0")
            freeze_early_layers(result.model, cfg.frozen_depth)
        freeze_zero_multipliers(result.model, cfg.lr_multipliers)  # before the count: frozen is not trainable
        self.trainable: dict[str, int] = {}
        named = dict(result.model.named_parameters())
        for name, group in classify_parameters(result.model).items():
            self.trainable[group] = self.trainable.get(group, 0) + named[name].numel()
        removal = None
        if cfg.norm == "dyt":
            from dytune._blocks import unwrap
            from dytune.hf_registration import site_kinds

            kinds = site_kinds(unwrap(result.model).config)
            removal = cfg.removal_schedule(result.norm_names, [kinds[n] for n in result.norm_names])
            if removal.active and cfg.max_steps > 0 and removal.total_steps > cfg.max_steps:
                raise DytuneError(f"the removal schedule needs {removal.total_steps} steps "
                                  f"({len(removal.site_groups())} groups x {removal.steps_per_group}) but max_steps is "
                                  f"{cfg.max_steps}: the saved model would be DyT with norms never removed in "
                                  "training; shorten the schedule")
        if cfg.bf16 and isinstance(self.teacher, FrozenTeacher):
            self.teacher.cast(torch.bfloat16)  # after the stages above, which fit blocks to its float32 outputs
        callbacks = [MetricsJsonl(run / "metrics.jsonl")]
        if cfg.max_train_tokens:
            callbacks.append(TokenBudget(cfg.max_train_tokens))
        self.trainer = DytuneTrainer(
            model=result.model, args=cfg, train_dataset=self.train_ds, eval_dataset=self.val_ds,
            data_collator=self.collator, processing_class=self.tokenizer, dytune_config=cfg, teacher=self.teacher,
            norm_names=result.norm_names, gates=gates, removal=removal,
            callbacks=[*callbacks, *self.extra_callbacks])
        if isinstance(self.teacher, FrozenTeacher) and self.trainer.is_fsdp_enabled:
            self.teacher.shard(cfg.device)  # the full-mode teacher copy is sharded too (UNVERIFIED until run on GPUs)
        if checkpoint is not None:
            import json

            step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
            if self.main:
                MetricsJsonl.truncate_after(run / "metrics.jsonl", step)
            _log(cfg, f"resuming from {checkpoint} (step {step})")

    def _removal_gates(self, model: torch.nn.Module):  # noqa: ANN202 - dytune.train.removal.NormGates | None
        """The gates of gradual removal, built on the bare model (before any adapter wraps its layers): from the
        norms this run replaced, or, where the conversion also changed linear layers (a linear refit, or a model
        converted in another process), from the distillation teacher (`NormGates.from_original`)."""
        from dytune.hf_registration import is_dyt_model
        from dytune.train.removal import NormGates

        if self.cfg.norm != "dyt" or not self.cfg.removal_schedule((), ()).active or not is_dyt_model(model):
            return None
        if self.originals is not None:
            return NormGates(self.originals.originals)
        # _setup_model refused a run without kept norms or a teacher copy, so the teacher is a FrozenTeacher
        names = [layer["name"] for layer in model.config.dyt["layers"]]
        return NormGates.from_original(model, self.teacher.model, names)

    def _write_outputs(self, summary: RunSummary, output: Any, final_eval: dict) -> None:
        from dytune.saving import save, write_model_card
        from dytune.train.outputs import save_adapter, write_layernorm_card
        from dytune.train.trainer import alpha_values

        cfg, trainer, run = self.cfg, self.trainer, self.run_dir
        adapter_dir = None
        if self.lora:
            if self.main:
                adapter_dir = save_adapter(trainer.model, run / "adapter", self.base_dir)
            merged = trainer.model.merge_and_unload()  # after the adapter is saved: merging changes the weights
        else:
            merged = trainer.accelerator.unwrap_model(trainer.model)
        tokens, steps = int(trainer.state.num_input_tokens_seen), trainer.state.global_step
        trained = f"`dytune train` (mode {cfg.mode}, distill {cfg.distill}, {tokens} tokens, {steps} steps)"
        if self.main:
            save(merged, run / "final", self.tokenizer, overwrite=True, card_extra=f"- Post-trained with {trained}")
            if cfg.norm == "layernorm":
                write_layernorm_card(run / "final", cfg.model, trained)
            elif not (run / "final" / "README.md").exists():
                write_model_card(merged, run / "final")
        runtime = output.metrics.get("train_runtime")
        conversion = self.conversion.report if self.conversion is not None else None
        summary.status = "completed"
        summary.global_step = steps
        summary.train_tokens = tokens
        summary.train_loss = output.training_loss
        summary.train_runtime_s = runtime
        summary.tokens_per_second = tokens / runtime if runtime else None
        summary.skipped_steps = trainer.skipped_steps
        summary.num_parameters = sum(p.numel() for p in merged.parameters())
        summary.trainable_parameters = self.trainable
        summary.final_eval = final_eval
        summary.alpha = alpha_values(merged, self.norm_names)
        summary.conversion = None if conversion is None else {"alpha_init": conversion.alpha_init,
                                                              "layers": len(conversion.converted)}
        summary.local_distill = self.local
        summary.reconstruction = self.reconstruction
        summary.eos_token_id = merged.generation_config.eos_token_id if merged.generation_config else None
        summary.final = str(run / "final")
        summary.adapter = str(adapter_dir) if adapter_dir else None
        summary.base = str(self.base_dir) if self.lora else None

    # -- the run -------------------------------------------------------------------------------------------
    def run(self) -> dict:
        from transformers import set_seed

        from dytune.train.trainer import NonFiniteError

        cfg, run = self.cfg, self.run_dir
        started = time.time()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        checkpoint = _resume_checkpoint(cfg, run)
        created = not run.exists()
        run.mkdir(parents=True, exist_ok=True)
        set_seed(cfg.seed)
        try:
            self._setup_data()
            self._setup_model()
            self._setup_teacher()
            self._fit_embeddings()
            self._setup_local_stage(checkpoint)
            self._setup_reconstruction(checkpoint)
            self._setup_trainer(checkpoint)
        except BaseException:
            if created and self.main:  # bad input found while setting up: leave nothing half-made behind
                shutil.rmtree(run, ignore_errors=True)
            raise
        if cfg.bf16_note:  # after set-up, so that bad input stays a one-line error
            _log(cfg, cfg.bf16_note)
        summary = RunSummary(run_dir=str(run), model=cfg.model, norm=cfg.norm, mode=cfg.mode, distill=cfg.distill,
                             resumed_from=checkpoint, world_size=self.trainer.accelerator.num_processes)
        try:
            output = self.trainer.train(resume_from_checkpoint=checkpoint)
        except NonFiniteError as err:
            if self.main:
                summary.status, summary.error = "stopped: non-finite", str(err)
                summary.global_step = self.trainer.state.global_step
                summary.write(run)
            raise
        self.trainer.clear_stage_hooks()
        final_eval = self.trainer.evaluate() if self.val_ds is not None else {}
        self._write_outputs(summary, output, final_eval)
        summary.wall_time_s = time.time() - started
        if self.main:
            summary.write(run)
        _barrier()
        return summary.to_dict()


def train(config: TrainConfig | dict | str | Path, *, callbacks: list | None = None, **overrides: Any) -> dict:
    """Run a training job; returns the summary (`RunSummary`, as a dict; also written to `output_dir/summary.json`).

    `callbacks`: extra `transformers.TrainerCallback`s."""
    if isinstance(config, (str, Path)):
        cfg = parse_config(config, [], **overrides)
    elif isinstance(config, dict):
        cfg = parse_config(None, [], **{**config, **overrides})
    else:
        cfg = config
    return TrainRecipe(cfg, callbacks).run()
