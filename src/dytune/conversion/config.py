"""`ConvertConfig`: every conversion option and its default, declared once.

The same fields are the Python API (`dytune.convert(model, ConvertConfig(...))`, or the same names as keyword
arguments), the `dytune convert` flags (generated from the fields by `add_arguments`) and the conversion keys of
`dytune train` (`TrainConfig` inherits these fields, flat: `alpha_init: calibrated` in a training YAML).

This module imports no torch, so the CLI can build its flags from it at once.
"""

from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from dytune.errors import DytuneError

ALL_KINDS: tuple[str, ...] = ("attn", "ffn", "post", "final", "embed", "qk", "inner")
DEFAULT_KINDS: tuple[str, ...] = ("attn", "ffn", "post", "final", "embed")  # all but QK-norm and inner norms
ALPHA_INITS = ("calibrated", "paper", "constant:VALUE")
METHODS = ("sequential", "parallel")
REFITS = ("none", "affine", "linear")  # see dytune.conversion.init.refit
RIDGE_TARGETS = ("zero", "original")  # what the linear refit's ridge pulls towards
FORMS = {"dyt": "tanh", "fakeln": "linear"}  # ConvertConfig.form -> the DyT module's form (dytune.dyt.FORMS)


@dataclass
class ConvertConfig:
    """How `dytune.convert` replaces a model's norms with DyT."""

    alpha_init: str = field(default="calibrated", metadata={
        "help": "calibrated (fit each alpha to its norm on calibration text), paper (the paper's width rule), "
                "constant:VALUE (or a number)"})
    norms: str | None = field(default=None, metadata={
        "help": f"kinds to convert, comma-separated from {','.join(ALL_KINDS)}, or 'all' (default: all but qk, inner)"})
    per_channel: bool = field(default=False, metadata={"help": "one alpha per channel instead of a scalar"})
    keep_affine: bool = field(default=True, metadata={
        "help": "copy the norms' gamma/beta into DyT (false reproduces the original study's dropped gamma/beta; "
                "for ablations)"})
    calibration: str | None = field(default=None, metadata={
        "help": "calibration data: a .txt file (paragraphs) or any source `dytune data` reads (Alpaca, ShareGPT, "
                "messages JSON/JSONL...) (default: a small built-in text)"})
    calibration_samples: int = field(default=64, metadata={"help": "records taken from the calibration data"})
    calibration_max_length: int = field(default=512, metadata={"help": "tokens per calibration text"})
    calibration_max_tokens: int = field(default=16384, metadata={
        "help": "calibration tokens used in the fits (more helps calibration_refit linear)"})
    calibration_method: str = field(default="sequential", metadata={
        "choices": METHODS,
        "help": "sequential (block by block on the partly converted model) or parallel (every norm on the original "
                "activations)"})
    calibration_refit: str = field(default="affine", metadata={
        "choices": REFITS,
        "help": "with calibrated alpha, what else least squares fits: affine (each DyT's gamma/beta), none (gamma/beta "
                "copied exactly), linear (also the linear layers around each norm and the LM head; changes their "
                "weights, untying a tied head)"})
    sink_weight: float = field(default=1.0, metadata={
        "help": "weight of each sequence's first token (the attention sink) in the least-squares fits "
                "(30 helps calibration_refit linear)"})
    refit_ridge: float = field(default=1e-3, metadata={
        "help": "ridge strength of the linear refit's solves, relative to the mean diagonal of each solve's Gram "
                "matrix (larger: a looser fit)"})
    refit_ridge_to: str = field(default="zero", metadata={
        "choices": RIDGE_TARGETS,
        "help": "what that ridge pulls towards: zero, or what each layer computed before the refit"})
    form: str = field(default="dyt", metadata={
        "choices": tuple(FORMS),
        "help": "dyt (weight * tanh(alpha x) + bias) or fakeln (a fixed scale: weight * alpha x + bias, mean "
                "subtracted where the norm was a LayerNorm; calibrated alpha = 1 / the input's mean per-token "
                "std or RMS, first tokens excluded)"})

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise a `DytuneError` for a setting outside its choices (also run on `TrainConfig`, which has these fields)."""
        if isinstance(self.alpha_init, (int, float)) and not isinstance(self.alpha_init, bool):
            self.alpha_init = str(self.alpha_init)
        parse_alpha_init(self.alpha_init)
        parse_kinds(self.norms)
        for f in fields(ConvertConfig):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise DytuneError(f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}")
        if self.refit == "linear" and self.calibration_method != "sequential":
            raise DytuneError("calibration_refit linear needs calibration_method sequential (it refits each block on "
                              "the activations of the blocks converted before it)")
        if self.refit_ridge < 0:
            raise DytuneError(f"refit_ridge must be >= 0, got {self.refit_ridge}")
        for name in ("calibration_samples", "calibration_max_length", "calibration_max_tokens"):
            if getattr(self, name) <= 0:
                raise DytuneError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_object(cls, obj: Any) -> ConvertConfig:
        """The conversion fields of any object that has them (a `TrainConfig`, an argparse namespace)."""
        return cls(**{f.name: getattr(obj, f.name) for f in fields(cls) if hasattr(obj, f.name)})

    @property
    def dyt_form(self) -> str:
        """The form of the DyT modules this conversion builds ("tanh" or "linear")."""
        return FORMS[self.form]

    @property
    def refit(self) -> str:
        """The refit that really runs: only calibrated alpha with kept gamma/beta refits anything."""
        alpha, _ = parse_alpha_init(self.alpha_init)
        return self.calibration_refit if alpha == "calibrated" and self.keep_affine else "none"


def parse_kinds(norms: str | Any | None) -> tuple[str, ...]:
    """`"attn,ffn,final"` or a list -> validated kinds; None -> the default set (everything but QK-norm)."""
    if norms is None:
        return DEFAULT_KINDS
    kinds = tuple(k.strip() for k in (norms.split(",") if isinstance(norms, str) else norms) if k.strip())
    if kinds == ("all",):
        return ALL_KINDS
    bad = [k for k in kinds if k not in ALL_KINDS]
    if bad or not kinds:
        raise DytuneError(f"unknown norm kind(s) {bad or kinds}: choose from {', '.join(ALL_KINDS)} (or 'all')")
    return kinds


def parse_alpha_init(alpha_init: str | float) -> tuple[str, float | None]:
    """-> ("constant", value) | ("paper", None) | ("calibrated", None)."""
    if isinstance(alpha_init, (int, float)) and not isinstance(alpha_init, bool):
        return "constant", float(alpha_init)
    text = str(alpha_init).strip().lower()
    if text.startswith("constant"):
        _, _, value = text.partition(":")
        try:
            return "constant", float(value or 0.5)
        except ValueError:
            raise DytuneError(f"bad alpha init {alpha_init!r}: write constant:0.5 (a number after the colon)") from None
    if text in ("paper", "calibrated"):
        return text, None
    try:
        return "constant", float(text)
    except ValueError:
        raise DytuneError(f"unknown alpha init {alpha_init!r}: choose constant:VALUE, paper or calibrated") from None


def _to_bool(text: str) -> bool:
    low = str(text).lower()
    if low in ("1", "true", "yes", "y", "on"):
        return True
    if low in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--key-name` flag per `ConvertConfig` field (the CLI also accepts `--key_name`), typed from the field,
    defaulting to the field's default; a bool flag alone means true (`--per-channel`), or give a value
    (`--keep-affine false`)."""
    group = parser.add_argument_group("conversion (ConvertConfig; the same keys in `dytune train`)")
    hints = typing.get_type_hints(ConvertConfig)  # not f.type: HfArgumentParser rewrites that in place
    for f in fields(ConvertConfig):
        default = f.default if f.default is not MISSING else None
        kwargs: dict[str, Any] = {"default": default, "help": f.metadata.get("help", ""), "dest": f.name}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        kind = hints[f.name]
        if kind is bool:
            kwargs.update(type=_to_bool, nargs="?", const=True, metavar="BOOL")
        elif kind in (int, float):
            kwargs["type"] = kind
        group.add_argument(f"--{f.name.replace('_', '-')}", **kwargs)
