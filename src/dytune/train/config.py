"""`TrainConfig`: one dataclass that is the Python API, the YAML schema and the `dytune train` flags.

It subclasses `transformers.TrainingArguments` (TRL's pattern), so every field users know from Trainer passes
through unchanged (batch size, gradient accumulation, scheduler, warmup, seed, `optim`, `report_to`,
`push_to_hub`, `deepspeed`, `fsdp`...). dytune adds its own keys below. YAML is read first and flags override
it; an unknown key (in the file or on the command line) is an error that lists the valid ones.

    dytune train configs/smollm2_cpu_lora_dyt.yaml --max_steps 50 --data.max_samples 200
    dytune.train(TrainConfig(model="smollm2-135m", data="alpaca.json", mode="lora+dyt", output_dir="runs/x"))
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from pathlib import Path
from typing import Any

from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy
from transformers.training_args import OptimizerNames

from dytune.conversion.config import ConvertConfig
from dytune.errors import DytuneError
from dytune.train.precision import AUTO, resolve_bf16

MODES = ("full", "lora", "lora+dyt", "dyt-only")
NORMS = ("layernorm", "dyt")


DYT_ONLY = {"dyt_only": True}  # field metadata: a setting that means nothing without DyT (the LayerNorm twin ignores it)


@dataclass
class TrainConfig(TrainingArguments, ConvertConfig):
    """dytune's training settings on top of every `transformers.TrainingArguments` field.

    The conversion keys (alpha_init, calibration, calibration_refit, ...) are `ConvertConfig`'s fields, inherited
    flat with their defaults: one declaration for `dytune.convert`, `dytune convert` and `dytune train`.
    """

    # -- what to train ------------------------------------------------------------------------------------
    model: str = field(default="smollm2-135m", metadata={"help": "model name: smollm2-135m, directory, .gguf, Hub id"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer (default: the model's)"})
    data: str | None = field(default=None, metadata={
        "help": "data source (file, folder, glob, Hub id; PATH:WEIGHT), or a mapping of DataSpec fields "
                "(source, max_samples, val_fraction, val_source, train_on, chat_template, clean, ...); on the "
                "command line also --data.KEY VALUE"})
    attn_implementation: str | None = field(default=None, metadata={"help": "eager | sdpa | flash_attention_2"})
    max_length: int | None = field(default=None, metadata={"help": "tokens per example (sets data.max_length)"})
    recipe: str | None = field(default=None, metadata={
        "help": "a named preset of these keys under the file and flags (dytune/recipes/NAME.yaml: recover (the "
                "default of `dytune train`), linear-refit, dytune, original-study, ...; none: no preset). Applied by "
                "`dytune train` and TrainConfig.from_recipe; a TrainConfig built directly records the name only"})
    norm: str = field(default="dyt", metadata={"help": "layernorm (no conversion: the baseline twin) or dyt"})
    mode: str = field(default="lora+dyt", metadata={"help": "full | lora | lora+dyt | dyt-only"})
    # -- LoRA (PEFT) -------------------------------------------------------------------------------------------
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=32, metadata={"help": "LoRA scaling numerator"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "module names to adapt (default per architecture); a name that matches nothing is an error"})
    # -- optimizer groups ---------------------------------------------------------------------------------------
    alpha_lr_multiplier: float = field(default=1.0, metadata={
        **DYT_ONLY, "help": "learning-rate multiplier for DyT alpha"})
    alpha_lr_relative: bool = field(default=False, metadata={
        **DYT_ONLY,
        "help": "scale each alpha's learning rate by its own |alpha| (same relative step for alpha 0.02 and 12)"})
    lr_multipliers: str | None = field(default=None, metadata={
        "help": "learning-rate multipliers by parameter name: 'GLOB=MULT,GLOB=MULT' (or a YAML mapping), e.g. "
                "'model.layers.[0-7].*=0.1'; the first matching glob wins, on top of the group's rate; 0 freezes"})
    frozen_depth: float = field(default=0.0, metadata={
        "help": "freeze the first floor(share x blocks) blocks and everything before them (embeddings, and a tied "
                "LM head with them): backward stops at the first block that trains; 0 = none"})
    affine_lr_multiplier: float = field(default=1.0, metadata={
        "help": "learning-rate multiplier for DyT gamma/beta (and norm weights in the LayerNorm twin)"})
    # -- distillation from the original model ---------------------------------------------------------------
    distill: bool = field(default=False, metadata={"help": "add KL(teacher || student) on logits"})
    distill_weight: float = field(default=1.0, metadata={"help": "lambda: weight of the KL term"})
    distill_temperature: float = field(default=1.0, metadata={"help": "softmax temperature of the KL term"})
    distill_on: str = field(default="all", metadata={"help": "all (every real token) | assistant (labelled only)"})
    distill_hidden_weight: float = field(default=0.0, metadata={
        "help": "weight of per-layer hidden-state matching (normalised MSE); 0 = off"})
    ce_weight: float = field(default=1.0, metadata={"help": "weight of the CE term (0 = pure distillation)"})
    teacher: str | None = field(default=None, metadata={
        "help": "teacher model name (default: the original model before conversion)"})
    # -- gradual removal: g * Norm(x) + (1 - g) * DyT(x), g ramped 1 -> 0 per group (dytune.train.removal) --
    removal_order: str = field(default="all", metadata={
        **DYT_ONLY,
        "help": "all | depth | fakeln (MLP norms, then attention, then final): the order groups of norms go"})
    removal_groups: int = field(default=1, metadata={
        **DYT_ONLY, "help": "number of groups the converted norms are removed in"})
    removal_ramp_steps: int = field(default=0, metadata={
        **DYT_ONLY,
        "help": "optimizer steps over which a group's gate goes from 1 (norm) to 0 (DyT); 0 with "
                "removal_hold_steps 0 = every norm replaced before training (the default)"})
    removal_hold_steps: int = field(default=0, metadata={
        **DYT_ONLY,
        "help": "steps each group trains at gate 0 before the next group's ramp starts"})
    removal_shape: str = field(default="linear", metadata={**DYT_ONLY, "help": "linear | cosine: the ramp's shape"})
    uniform_scale_weight: float = field(default=0.0, metadata={
        **DYT_ONLY, "help": "weight of Baroni et al.'s auxiliary loss pulling each token's scale at the chosen sites' "
                            "inputs towards the mean (dytune.train.uniform_scale; they use 0.1 with FakeLN); 0 = off"})
    uniform_scale_form: str = field(default="relative", metadata={
        **DYT_ONLY, "help": "relative ((s / mean - 1)^2 over ordinary tokens: model-independent, the attention sink "
                            "left alone) or absolute (Baroni et al.'s (s - mean)^2 over every token)"})
    uniform_scale_kinds: str = field(default="final", metadata={
        **DYT_ONLY, "help": "the converted sites that loss looks at: comma-separated kinds (final, attn, ffn, ...) "
                            "or all"})
    local_distill_steps: int = field(default=0, metadata={
        **DYT_ONLY,
        "help": "before training: steps of block-wise distillation (each block vs the teacher's block output)"})
    local_distill_lr: float = field(default=1e-3, metadata={
        **DYT_ONLY, "help": "learning rate of the block-wise stage"})
    local_distill_params: str = field(default="dyt", metadata={
        **DYT_ONLY, "help": "dyt (alpha/gamma/beta) | block (all)"})
    # -- sequential block reconstruction before training (dytune.train.reconstruct) ----------------------------
    reconstruct_steps: int = field(default=0, metadata={
        **DYT_ONLY, "help": "before training: optimizer steps per block of sequential reconstruction (each block "
                            "trained on the student's own input towards the original block's output); 0 = off"})
    reconstruct_tokens: int = field(default=32768, metadata={
        **DYT_ONLY, "help": "training tokens cached for the reconstruction (~3 x hidden x 4 bytes each)"})
    reconstruct_lr: float = field(default=2e-4, metadata={**DYT_ONLY, "help": "its AdamW learning rate (cosine)"})
    reconstruct_max_grad_norm: float = field(default=0.1, metadata={**DYT_ONLY, "help": "its gradient clipping"})
    reconstruct_sink_weight: float = field(default=1.0, metadata={
        **DYT_ONLY, "help": "weight of each sequence's first token in its per-token normalised MSE"})
    compile_loss: bool = field(default=True, metadata={
        "help": "torch.compile the CE and KL over the vocabulary (one fused pass instead of a chain of memory-bound "
                "ones; eager if compiling fails)"})
    # -- run control ---------------------------------------------------------------------------------------------
    max_train_tokens: int = field(default=0, metadata={
        "help": "stop once this many training tokens (non-padding) have been seen, at the end of that step; 0 = no "
                "limit (max_steps / num_train_epochs decide)"})
    lr_decay_fraction: float = field(default=0.0, metadata={
        "help": "lr_scheduler_type warmup_stable_decay: the share of the run's steps its final decay takes (sets "
                "num_decay_steps from the step count); 0 = num_decay_steps from lr_scheduler_kwargs"})
    resume: bool = field(default=False, metadata={
        "help": "continue from the latest checkpoint in output_dir (starts fresh if there is none)"})
    overwrite: bool = field(default=False, metadata={"help": "delete an existing output_dir first"})
    nan_policy: str = field(default="stop", metadata={"help": "stop | skip: what a NaN/Inf loss or gradient does"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads"})

    # -- TrainingArguments defaults that dytune sets on purpose ---------------------------------------------
    output_dir: str | None = field(default="runs/dytune", metadata={"help": "the run directory"})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={"help": "tensorboard, wandb, all, none"})
    logging_steps: float = field(default=10, metadata={"help": "log metrics every N steps"})
    eval_strategy: IntervalStrategy | str = field(default="steps", metadata={"help": "steps | epoch | no"})
    eval_steps: float | None = field(default=50, metadata={"help": "validate every M steps"})
    save_steps: float = field(default=100, metadata={"help": "checkpoint every K steps"})
    save_total_limit: int | None = field(default=2, metadata={"help": "keep at most L checkpoints"})
    # TRL's SFTConfig turns these on by default even on CPU; dytune says what it means.
    bf16: bool | str = field(default=False, metadata={"help": "bf16 mixed precision (GPU, or CPU autocast): true, "
                             "false, or auto (on where bf16 is fast: CUDA with bf16, CPUs with AMX or AVX512-BF16)"})
    fp16: bool = field(default=False, metadata={"help": "fp16 mixed precision (CUDA only)"})
    activation_checkpointing: bool | None = field(default=False, metadata={"help": "recompute activations"})
    prediction_loss_only: bool = field(default=True, metadata={"help": "validation keeps no logits (memory)"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "dytune's collator picks the columns"})
    optim: OptimizerNames | str = field(default="adamw_torch", metadata={"help": "optimizer (adamw_torch, adamw_torch_fused, ...)"})

    def __post_init__(self) -> None:
        import torch

        if self.norm not in NORMS:
            raise DytuneError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.mode not in MODES:
            raise DytuneError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.distill_on not in ("all", "assistant"):
            raise DytuneError(f"distill_on must be 'all' or 'assistant', got {self.distill_on!r}")
        if self.nan_policy not in ("stop", "skip"):
            raise DytuneError(f"nan_policy must be 'stop' or 'skip', got {self.nan_policy!r}")
        if self.local_distill_params not in ("dyt", "block"):
            raise DytuneError(f"local_distill_params must be 'dyt' or 'block', got {self.local_distill_params!r}")
        if self.recipe is not None:
            from dytune.train.recipes import check_recipe

            check_recipe(self.recipe)
        ConvertConfig.check(self)
        removal = self.removal_schedule((), ())  # validates the removal_* settings
        if self.norm == "layernorm" and (removal.active or self.local_distill_steps or self.reconstruct_steps):
            raise DytuneError("gradual removal, local_distill_steps and reconstruct_steps convert norms: they need "
                              "norm: dyt")
        if self.uniform_scale_form not in ("relative", "absolute"):
            raise DytuneError(f"uniform_scale_form must be relative or absolute, got {self.uniform_scale_form!r}")
        if self.uniform_scale_weight < 0:
            raise DytuneError(f"uniform_scale_weight must be >= 0 (0: off), got {self.uniform_scale_weight}")
        if self.reconstruct_steps < 0 or self.reconstruct_tokens <= 0 or self.reconstruct_lr <= 0:
            raise DytuneError("reconstruct_steps must be >= 0, reconstruct_tokens and reconstruct_lr > 0")
        if (self.distill_hidden_weight or self.distill_weight == 0) and not self.distill:
            if self.distill_hidden_weight:
                raise DytuneError("distill_hidden_weight needs distill: true (it compares with the teacher)")
        if self.distill and self.ce_weight == 0 and self.distill_weight == 0 and not self.distill_hidden_weight:
            raise DytuneError("every loss term has weight 0: set ce_weight, distill_weight or distill_hidden_weight")
        self.lr_multipliers = parse_lr_multipliers(self.lr_multipliers)
        if self.max_train_tokens < 0:
            raise DytuneError(f"max_train_tokens must be >= 0 (0: no limit), got {self.max_train_tokens}")
        self._check_decay_fraction()
        if not 0.0 <= self.frozen_depth < 1.0:
            raise DytuneError(f"frozen_depth is a share of the blocks in [0, 1), got {self.frozen_depth}")
        if self.lora_r <= 0:
            raise DytuneError(f"lora_r must be positive, got {self.lora_r}")
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [t.strip() for t in self.lora_target_modules.split(",") if t.strip()]
        self.data = _data_mapping(self.data)
        if self.max_length is not None:
            given = self.data.get("max_length")
            if given is not None and given != self.max_length:
                raise DytuneError(f"max_length {self.max_length} and data.max_length {given} disagree: set one")
            self.data["max_length"] = self.max_length
        if self.include_num_input_tokens_seen in ("no", False):
            self.include_num_input_tokens_seen = "non_padding"  # tokens/s and token budgets need the count
        cuda = torch.cuda.is_available()
        if self.fp16 and (self.use_cpu or not cuda):
            raise DytuneError("fp16 needs a CUDA GPU (fp16 mixed precision relies on CUDA's grad scaler); "
                              "on CPU train in float32 or with bf16: true (or auto)")
        xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
        accelerator = cuda or xpu or torch.backends.mps.is_available()
        if not accelerator:
            # Without use_cpu, transformers under torchrun on a CPU machine starts one independent single-process
            # run per rank (world size 1, all writing the same directory); it also refuses bf16 without a GPU.
            self.use_cpu = True
        device = "cpu" if self.use_cpu else "cuda" if cuda else "xpu" if xpu else "mps"
        recorded = self._recorded_bf16() if self.resume and isinstance(self.bf16, str) else None  # for `auto`
        self.bf16, self.bf16_note = resolve_bf16(self.bf16, device, fp16=self.fp16, recorded=recorded)  # note: the log
        super().__post_init__()
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.world_size != launched:
            raise DytuneError(f"launched as {launched} processes but training would run with world size "
                              f"{self.world_size}: each process would train alone and overwrite the others' files")

    def _recorded_bf16(self) -> bool | None:
        """bf16 as the run in output_dir recorded it (config.yaml), so that `bf16: auto` resumes it in the same
        precision on another machine; None without a recorded run."""
        import yaml

        path = Path(self.output_dir or "") / "config.yaml"
        try:
            recorded = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None
        value = recorded.get("bf16") if isinstance(recorded, dict) else None
        return value if isinstance(value, bool) else None

    def _check_decay_fraction(self) -> None:
        if not 0.0 <= self.lr_decay_fraction < 1.0:
            raise DytuneError(f"lr_decay_fraction must be in [0, 1), got {self.lr_decay_fraction}")
        if not self.lr_decay_fraction:
            return
        scheduler = str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type))
        if scheduler != "warmup_stable_decay":
            raise DytuneError(f"lr_decay_fraction sets the decay of lr_scheduler_type warmup_stable_decay, not of "
                              f"{scheduler}: set lr_decay_fraction: 0 or that scheduler")
        if "num_decay_steps" in (self.lr_scheduler_kwargs or {}):
            raise DytuneError("lr_decay_fraction and lr_scheduler_kwargs' num_decay_steps both set the decay: set one")
        if self.max_train_tokens:
            raise DytuneError("lr_decay_fraction places the decay at the end of the planned steps, which a token "
                              "budget (max_train_tokens) may stop before: set max_steps instead, or lr_decay_fraction: 0")

    @classmethod
    def from_recipe(cls, recipe: str | None = None, **values: Any) -> TrainConfig:
        """The named recipe (default: dytune.train.recipes.DEFAULT_RECIPE) with `values` on top."""
        from dytune.train.recipes import with_recipe

        if recipe is not None:
            values["recipe"] = recipe
        return cls(**with_recipe(values))

    # -- views --------------------------------------------------------------------------------------------
    def convert_config(self) -> ConvertConfig:
        """The conversion settings of this run."""
        return ConvertConfig.from_object(self)

    def removal_schedule(self, names, kinds):  # noqa: ANN001, ANN201 - dytune.train.removal.RemovalSchedule
        from dytune.train.removal import RemovalSchedule

        return RemovalSchedule(tuple(names), tuple(kinds), order=self.removal_order, groups=self.removal_groups,
                               ramp_steps=self.removal_ramp_steps, hold_steps=self.removal_hold_steps,
                               shape=self.removal_shape)

    def data_spec(self):  # noqa: ANN201 - dytune.data.DataSpec
        from dytune.data import DataSpec

        values = dict(self.data)
        values.setdefault("seed", self.seed)
        return DataSpec.from_dict(values)

    def dytune_dict(self) -> dict[str, Any]:
        """dytune's own keys (those not in TrainingArguments)."""
        return {name: getattr(self, name) for name in dytune_keys()}

    def resolved(self) -> dict[str, Any]:
        """Every setting, dytune's first, as plain values (what the run directory records)."""
        out = self.dytune_dict()
        for key, value in self.to_dict().items():
            out.setdefault(key, value)
        return json.loads(json.dumps(out, default=str))


def _take_dyt_only_marks(cls: type) -> frozenset[str]:
    """The keys a LayerNorm twin ignores: every `ConvertConfig` field and each field marked `DYT_ONLY`. The mark is
    then dropped from the field's metadata, which HfArgumentParser hands to argparse as keyword arguments."""
    marked = {f.name for f in fields(ConvertConfig)} | {"norm"}
    for f in fields(cls):
        if f.metadata.get("dyt_only"):
            marked.add(f.name)
            f.metadata = MappingProxyType({k: v for k, v in f.metadata.items() if k != "dyt_only"})
    return frozenset(marked)


DYT_ONLY_KEYS = _take_dyt_only_marks(TrainConfig)


def parse_lr_multipliers(value: Any) -> dict[str, float] | None:
    """'GLOB=MULT,GLOB=MULT' or a mapping -> {glob: multiplier} (order kept: the first match wins)."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        pairs = [item.rpartition("=") for item in value.split(",") if item.strip()]
        if any(not sep or not glob.strip() for glob, sep, _ in pairs):
            raise DytuneError(f"lr_multipliers must look like 'GLOB=MULT,GLOB=MULT', got {value!r}")
        value = {glob.strip(): mult for glob, _, mult in pairs}
    if not isinstance(value, dict):
        raise DytuneError(f"lr_multipliers must be a mapping or 'GLOB=MULT,...', got {type(value).__name__}")
    out = {}
    for glob, mult in value.items():
        try:
            out[str(glob)] = float(mult)
        except (TypeError, ValueError):
            raise DytuneError(f"lr_multipliers: {glob!r} has multiplier {mult!r}, not a number") from None
        if out[str(glob)] < 0:
            raise DytuneError(f"lr_multipliers: {glob!r} has a negative multiplier {mult!r}")
    return out


def _data_mapping(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if isinstance(data, dict):
        return dict(data)
    if isinstance(data, (list, tuple)):
        return {"source": list(data)}
    text = str(data).strip()
    if text.startswith("{"):
        try:
            return dict(json.loads(text))
        except json.JSONDecodeError as err:
            raise DytuneError(f"data looks like JSON but does not parse: {err}") from None
    return {"source": text}


def dytune_keys() -> list[str]:
    """dytune's keys (not TrainingArguments'), in reading order: what to train, then the conversion keys, the rest."""
    base = {f.name for f in fields(TrainingArguments)}
    conversion = [f.name for f in fields(ConvertConfig)]
    own = [f.name for f in fields(TrainConfig) if f.name not in base and f.name not in conversion]
    at = own.index("mode") + 1
    return own[:at] + conversion + own[at:]


def valid_keys() -> list[str]:
    return [f.name for f in fields(TrainConfig) if f.init]


def _unknown_key_error(unknown: list[str], where: str) -> DytuneError:
    valid = valid_keys()
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=3)
        if close:
            hints.append(f"{key} -> did you mean {', '.join(close)}?")
    own = dytune_keys()
    return DytuneError(
        f"unknown setting(s) {', '.join(unknown)} in {where}." + (" " + "; ".join(hints) if hints else "")
        + f"\ndytune keys: {', '.join(own)}\nplus every transformers.TrainingArguments field: "
        + ", ".join(sorted(set(valid) - set(own))))


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DytuneError(f"config file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DytuneError(f"config file {path} is not UTF-8 text (a binary file?): it must be YAML settings") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DytuneError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if values is None:
        raise DytuneError(f"config file {path} is empty: write its settings as YAML (model:, data:, ...)")
    if not isinstance(values, dict):
        raise DytuneError(f"{path} must hold a mapping of settings (key: value), got {type(values).__name__}")
    return values


def _split_data_flags(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Pull `--data.KEY VALUE` (or `--data.KEY=VALUE`) out of argv; values are parsed as YAML scalars."""
    import yaml

    rest, data = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--data."):
            key, eq, value = arg[len("--data."):].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise DytuneError(f"{arg} needs a value")
                value, i = argv[i + 1], i + 1
            data[key.replace("-", "_")] = yaml.safe_load(value)
        else:
            rest.append(arg)
        i += 1
    return rest, data


def _split_bf16_auto(argv: list[str]) -> tuple[list[str], bool]:
    """Pull `--bf16 auto` (or `--bf16=auto`) out of argv: HfArgumentParser parses bf16 as a bool. As with any
    flag, the last `--bf16` given wins."""
    rest, auto, i = [], False, 0
    while i < len(argv):
        if argv[i].lower() == f"--bf16={AUTO}":
            auto = True
        elif argv[i] == "--bf16" and i + 1 < len(argv) and argv[i + 1].lower() == AUTO:
            auto, i = True, i + 1
        else:
            if argv[i] == "--bf16" or argv[i].startswith("--bf16="):
                auto = False
            rest.append(argv[i])
        i += 1
    return rest, auto


def parse_config(config_file: str | Path | None = None, argv: list[str] | None = None,
                 **overrides: Any) -> TrainConfig:
    """YAML file (optional) < command-line flags (`argv`, HfArgumentParser syntax) < keyword overrides."""
    from transformers import HfArgumentParser

    values = load_yaml(config_file) if config_file else {}
    valid = set(valid_keys())
    unknown = sorted(set(values) - valid)
    if unknown:
        raise _unknown_key_error(unknown, str(config_file))
    argv, data_flags = _split_data_flags(list(argv or []))
    argv, bf16_auto = _split_bf16_auto(argv)
    parser = HfArgumentParser(TrainConfig)
    # Defaults become a marker so that only flags really given override the file (argparse would also run a
    # YAML string such as "non_padding" through a field's type if it were set as a default).
    unset = object()
    parser.set_defaults(**{key: unset for key in valid})
    namespace, remaining = parser.parse_known_args(argv)
    if remaining:
        flags = [a.lstrip("-").split("=")[0] for a in remaining if a.startswith("-")]
        raise _unknown_key_error(flags or remaining, "the command line")
    kwargs = dict(values)
    kwargs.update({k: v for k, v in vars(namespace).items() if k in valid and v is not unset})
    if data_flags:
        data = _data_mapping(kwargs.get("data"))
        data.update(data_flags)
        kwargs["data"] = data
    if bf16_auto:
        kwargs["bf16"] = AUTO
    kwargs.update(overrides)
    from dytune.train.recipes import with_recipe

    kwargs = with_recipe(kwargs)
    try:
        return TrainConfig(**kwargs)
    except (TypeError, ValueError) as err:
        raise DytuneError(f"bad training setting: {err}") from None
