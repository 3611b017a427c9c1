"""`DytuneTrainer`: Hugging Face's Trainer with dytune's loss, optimizer groups, metrics, NaN guard and atomic
checkpoints. The loop itself (gradient accumulation, DDP/FSDP/DeepSpeed, resume with RNG and data position,
progress bars, TensorBoard/W&B) is Trainer's own.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import rotate_checkpoints

from dytune.dyt import DyT
from dytune._blocks import unwrap
from dytune.errors import DytuneError
from dytune.train.losses import CompiledLoss, causal_ce_sum, hidden_match, kl_teacher_student
from dytune.train.removal import NormGates, RemovalSchedule
from dytune.train.trainable import param_groups

STAGING = ".checkpoint-staging"  # checkpoints are written here, then renamed into place


class NonFiniteError(DytuneError):
    """A NaN/Inf loss or gradient with nan_policy: stop."""


class DytuneTrainer(Trainer):
    # compute_loss normalises over the whole accumulated batch itself (see compute_loss)
    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, dytune_config: Any, teacher: Any = None, norm_names: list[str] | None = None,
                 gates: NormGates | None = None, removal: RemovalSchedule | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dy = dytune_config
        self.teacher = teacher
        self.norm_names = list(norm_names or [])
        self._parts: dict[str, float] = {}
        self._parts_n = 0
        self._mark: tuple[float, int] | None = None
        self._staging: str | None = None
        self._last_inputs: dict | None = None
        self._bad_loss: str | None = None
        self.removal = removal if removal is not None and removal.active else None
        if self.removal is not None and gates is None:
            raise DytuneError("gradual removal (removal_ramp_steps / removal_hold_steps) needs gates: the original "
                              "norms (dytune.train.removal.NormGates)")
        self._gates = gates if self.removal is not None else None
        self._gates_cleared = False
        self.skipped_steps = 0
        self._eval_nll = self._eval_tokens = None
        compiled = getattr(self.dy, "compile_loss", False)
        self._ce = CompiledLoss(causal_ce_sum) if compiled else causal_ce_sum
        self._kl = CompiledLoss(kl_teacher_student) if compiled else kl_teacher_student
        self._scale_hooks = None
        if getattr(self.dy, "uniform_scale_weight", 0.0) and self.dy.norm == "dyt":
            from dytune.train.uniform_scale import UniformScaleHooks

            kinds = None if self.dy.uniform_scale_kinds == "all" else self.dy.uniform_scale_kinds.split(",")
            self._scale_hooks = UniformScaleHooks(unwrap(self.model), kinds=kinds,
                                                  relative=self.dy.uniform_scale_form == "relative")
        from dytune.train.callbacks import summarize_alphas_on_console
        summarize_alphas_on_console(self)  # one alpha summary per console line; metrics.jsonl keeps every layer

    # -- optimizer -----------------------------------------------------------------------------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = model if model is not None else self.model
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            kwargs = {k: v for k, v in kwargs.items() if k not in ("params", "model", "optimizer_dict")}
            groups = param_groups(opt_model, self.args.learning_rate, self.args.weight_decay,
                                  self.dy.alpha_lr_multiplier, self.dy.affine_lr_multiplier,
                                  getattr(self.dy, "alpha_lr_relative", False),
                                  getattr(self.dy, "lr_multipliers", None))
            self.optimizer = cls(groups, **kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):  # noqa: ANN201
        fraction = getattr(self.dy, "lr_decay_fraction", 0.0)
        if not fraction or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        given = self.args.lr_scheduler_kwargs  # HF's warmup_stable_decay takes its decay in steps only
        self.args.lr_scheduler_kwargs = {**(given or {}), "num_decay_steps": max(1, round(fraction * num_training_steps))}
        try:
            return super().create_scheduler(num_training_steps, optimizer)
        finally:
            self.args.lr_scheduler_kwargs = given

    # -- loss ------------------------------------------------------------------------------------------------
    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):  # noqa: ANN201
        labels = inputs["labels"]
        mask = inputs.get("attention_mask")
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        training = model.training
        distill = training and self.teacher is not None and self.dy.distill
        want_hidden = distill and self.dy.distill_hidden_weight > 0
        out = model(**forward, use_cache=False, output_hidden_states=want_hidden)
        nll, n = self._ce(out.logits, labels)
        if not training:  # validation: token-weighted CE, summed here and divided in evaluation_loop
            self._eval_nll = nll.detach() + (0 if self._eval_nll is None else self._eval_nll)
            self._eval_tokens = n + (0 if self._eval_tokens is None else self._eval_tokens)
            loss = nll / n.clamp_min(1)
            return (loss, out) if return_outputs else loss
        ga = self.current_gradient_accumulation_steps
        if num_items_in_batch is not None:
            # tokens of the whole accumulated (and, across processes, gathered) batch: every token counts once
            ce = nll / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                ce = ce * self.accelerator.num_processes  # DDP averages gradients over processes
        else:
            ce = nll / n.clamp_min(1) / ga
        total = self.dy.ce_weight * ce
        parts = {"ce": float(nll.detach() / n.clamp_min(1))}
        if self._scale_hooks is not None:  # Baroni et al.'s auxiliary loss: every token's scale near the mean
            scale = self._scale_hooks.loss(forward.get("input_ids"), mask)
            total = total + self.dy.uniform_scale_weight * scale / ga
            parts["uniform_scale"] = float(scale.detach())
        if distill:
            with torch.no_grad(), self.teacher.teacher(model) as teacher_model:
                t_out = teacher_model(**forward, use_cache=False, output_hidden_states=want_hidden)
            if self.dy.distill_on == "assistant":
                kl_mask = labels[:, 1:] != -100
            else:
                kl_mask = mask[:, 1:].bool() if mask is not None else torch.ones_like(labels[:, 1:], dtype=torch.bool)
            kl = self._kl(out.logits, t_out.logits, kl_mask, self.dy.distill_temperature)
            total = total + self.dy.distill_weight * kl / ga
            parts["kl"] = float(kl.detach())
            if want_hidden:
                real = mask.bool() if mask is not None else torch.ones_like(labels, dtype=torch.bool)
                hid = hidden_match(out.hidden_states, t_out.hidden_states, real)
                total = total + self.dy.distill_hidden_weight * hid / ga
                parts["hidden_mse"] = float(hid.detach())
        for key, value in parts.items():
            self._parts[key] = self._parts.get(key, 0.0) + value
        self._parts_n += 1
        return (total, out) if return_outputs else total

    # -- one step: removal gates, NaN guard -------------------------------------------------------------
    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:  # noqa: ANN001
        if self._mark is None:
            self._mark = (time.perf_counter(), int(self.state.num_input_tokens_seen))
        self._set_gates()
        self._last_inputs = inputs
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            self._bad_loss = f"loss {float(loss)}"
            if self.dy.nan_policy == "stop":
                self._stop(model, self._bad_loss)
        return loss

    def _get_grad_norm(self, model: nn.Module, grad_norm=None):  # noqa: ANN001, ANN202
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)  # pre-clip norm (Trainer's clip returns it)
        value = float(grad_norm) if grad_norm is not None else 0.0
        bad = self._bad_loss or (None if math.isfinite(value) else f"gradient norm {value}")
        self._bad_loss = None
        if bad:
            if self.dy.nan_policy == "stop":
                self._stop(model, bad)
            # skip: drop every gradient so the optimizer step changes nothing (AdamW skips grad=None)
            for param in model.parameters():
                param.grad = None
            self.skipped_steps += 1
        return grad_norm

    def _stop(self, model: nn.Module, what: str) -> None:
        from transformers.trainer_utils import get_last_checkpoint

        step = self.state.global_step + 1
        last = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        detail = diagnose(unwrap(model), self._last_inputs)
        raise NonFiniteError(
            f"non-finite {what} at optimizer step {step}. {detail} Training stopped; the last good checkpoint is "
            f"{last or '(none yet)'} (resume: --resume; or set nan_policy: skip to skip such steps).")

    def _set_gates(self) -> None:
        """Gradual removal: sites still being removed mix their original norm in (see `dytune.train.removal`)."""
        if self._gates is not None and not self._gates_cleared:
            self._gates.set(self.model, self.removal.gates(self.state.global_step))

    def clear_stage_hooks(self) -> None:
        """Remove every gate for good (after training: the model is pure DyT, and so are later evaluations)."""
        if self._gates is not None:
            self._gates.clear()
            self._gates_cleared = True

    # -- metrics -----------------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add what a DyT run needs to be watched by
            now, tokens = time.perf_counter(), int(self.state.num_input_tokens_seen)
            if self._mark is not None and now > self._mark[0]:
                logs["tokens_per_second"] = (tokens - self._mark[1]) / (now - self._mark[0])
            self._mark = (now, tokens)
            logs["tokens"] = tokens
            if self._parts_n:
                for key, value in self._parts.items():
                    logs[key] = value / self._parts_n
            self._parts, self._parts_n = {}, 0
            if self._gates is not None:
                logs["removal_gate"] = self._gates.mean_gate  # mean g over converted sites: 1 norm .. 0 DyT
            if self.skipped_steps:
                logs["skipped_steps"] = self.skipped_steps
            for name, value in alpha_values(self.model, self.norm_names).items():
                logs[f"alpha/{name}"] = value
            start_time = None  # Trainer would add run-average speed fields to every step's record
        super().log(logs, start_time)

    def evaluation_loop(self, *args: Any, **kwargs: Any):  # noqa: ANN201
        self._eval_nll = self._eval_tokens = None
        self._set_gates()  # evaluate the model of this step (eval_on_start comes before any training step)
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        if self._eval_tokens is not None:
            nll = self.accelerator.reduce(self._eval_nll.float().reshape(1), reduction="sum")
            tokens = self.accelerator.reduce(self._eval_tokens.float().reshape(1), reduction="sum")
            loss = float(nll) / max(float(tokens), 1.0)
            output.metrics[f"{prefix}_loss"] = loss  # token-weighted, as `dytune eval`
            output.metrics[f"{prefix}_ppl"] = math.exp(min(loss, 50.0))
            output.metrics[f"{prefix}_tokens"] = int(tokens)
        if self._gates is not None:
            output.metrics[f"{prefix}_removal_gate"] = self._gates.mean_gate  # > 0: norms were still mixed in
        return output

    # -- checkpoints: written aside, renamed into place -----------------------------------------------------
    def _record_best_checkpoint(self, run_dir: str, staged: str) -> None:
        """Trainer looks for the best checkpoint where it writes (the staging folder), so it either misses it
        or records the staging path and `load_best_model_at_end` finds nothing: point it at the final name."""
        step = getattr(self.state, "best_global_step", None)
        if not self.args.metric_for_best_model or not step:
            return
        best = os.path.join(run_dir, f"checkpoint-{step}")
        if step == self.state.global_step or os.path.isdir(best):
            self.state.best_model_checkpoint = best
            self.state.save_to_json(os.path.join(staged, "trainer_state.json"))

    def _get_output_dir(self, trial: Any) -> str:
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        run_dir = self.args.output_dir
        name = f"checkpoint-{self.state.global_step}"
        self._staging = os.path.join(run_dir, STAGING)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every process has written its RNG state
        if self.args.should_save:
            src, dst = os.path.join(run_dir, STAGING, name), os.path.join(run_dir, name)
            self._record_best_checkpoint(run_dir, src)
            _fsync_tree(src)
            if os.path.exists(dst):
                shutil.rmtree(dst)
            os.replace(src, dst)  # atomic: a checkpoint-N directory is always complete
            _fsync_dir(run_dir)
            shutil.rmtree(os.path.join(run_dir, STAGING), ignore_errors=True)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()


def _fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except FileNotFoundError:  # a temporary file its writer has already renamed
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def active_norm(model: nn.Module, name: str) -> nn.Module:
    """The module that really runs at a norm site (PEFT's trained copy inside a ModulesToSaveWrapper)."""
    module = unwrap(model).get_submodule(name)
    copies = getattr(module, "modules_to_save", None)
    if copies is not None and getattr(module, "active_adapter", None) in copies:
        return copies[module.active_adapter]
    return module


def alpha_values(model: nn.Module, names: list[str]) -> dict[str, float]:
    out = {}
    for name in names:
        module = active_norm(model, name)
        if isinstance(module, DyT):
            alpha = module.alpha.detach()
            alpha = alpha.full_tensor() if hasattr(alpha, "full_tensor") else alpha  # FSDP2 DTensor
            out[name] = float(alpha.float().mean())
    return out


@torch.no_grad()
def diagnose(model: nn.Module, inputs: dict | None) -> str:
    """Which DyT alphas are non-finite or largest, and where activations first stop being finite."""
    notes = []
    dyts = [(n, m) for n, m in model.named_modules() if isinstance(m, DyT) and ".original_module" not in n]
    bad_alpha = [n for n, m in dyts if not torch.isfinite(m.alpha).all()]
    if bad_alpha:
        notes.append(f"non-finite alpha in {', '.join(bad_alpha[:5])}" + (" ..." if len(bad_alpha) > 5 else ""))
    elif dyts:
        top = sorted(dyts, key=lambda item: -float(item[1].alpha.abs().max()))[:3]
        notes.append("largest |alpha|: " + ", ".join(f"{n}={float(m.alpha.abs().max()):.4g}" for n, m in top))
    if inputs is not None:
        first: list[str] = []
        handles = []

        def hook(name: str):  # noqa: ANN202
            def fn(module, args, output):  # noqa: ANN001
                x = args[0] if args else None
                if not first and isinstance(x, torch.Tensor) and not torch.isfinite(x).all():
                    first.append(f"input of {name}")
                elif not first and isinstance(output, torch.Tensor) and not torch.isfinite(output).all():
                    first.append(f"output of {name} (max |input| {float(x.abs().max()):.4g})")
            return fn

        for name, module in dyts:
            handles.append(module.register_forward_hook(hook(name)))
        try:
            was = model.training
            model.eval()
            model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
            model.train(was)
        except Exception as err:  # noqa: BLE001 - a diagnosis must not hide the real error
            notes.append(f"(re-running the batch failed: {err})")
        finally:
            for h in handles:
                h.remove()
        notes.append(f"first non-finite activation: {first[0]}" if first else
                     "activations are finite on a re-run of the batch (the blow-up is in the backward pass or "
                     "the optimizer state)")
    return "; ".join(notes) + "."
