"""Make DyT models first-class Hugging Face models: saved, reloaded and Auto-loaded without losing alpha.

A converted model keeps its architecture's classes, but its instance is re-classed to a thin subclass
(`DyT<Base>ForCausalLM`, config `DyT<Base>Config`) that
  * serialises `model_type: "dytune"` plus a `dyt` block (base model type, which norms, alpha shape, bias),
    so plain `AutoModelForCausalLM.from_pretrained` without `import dytune` fails loudly ("model type
    dytune not recognised") instead of silently re-initialising LayerNorms (the original study's bug);
  * rebuilds the DyT layers in `__init__`, so `from_pretrained` loads alpha/gamma/beta strictly by name;
  * initialises DyT parameters itself (transformers 5 initialises modules with the `_init_weights` of the
    nearest enclosing PreTrainedModel, which knows nothing of DyT: alpha would be uninitialised memory);
  * keeps DyT parameters in float32 under `dtype=torch.bfloat16` loads (`_keep_in_fp32_modules`).

The "dytune" type is registered with AutoConfig / AutoModelForCausalLM as soon as transformers is imported in a
process that imported dytune (`dytune._autoregister`), or by `dytune.register()`, so a fresh process restores the
model exactly, and PEFT's `AutoPeftModelForCausalLM` finds it through the same Auto classes.
At run time the config keeps the base `model_type` (generation, PEFT and attention code see a Llama).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from dytune.dyt import FORMS, DyT
from dytune.errors import DytuneError

MODEL_TYPE = "dytune"
_CONFIG_CLASSES: dict[type, type] = {}
_MODEL_CLASSES: dict[type, type] = {}


def _dyt_config_class(base: type) -> type:
    """The DyT twin of a config class (cached, registered with AutoModelForCausalLM on creation)."""
    if base in _CONFIG_CLASSES:
        return _CONFIG_CLASSES[base]
    if getattr(base, "_is_dytune", False):
        return base

    def to_dict(self) -> dict[str, Any]:
        out = base.to_dict(self)
        out["model_type"] = MODEL_TYPE
        return out

    @classmethod
    def get_config_dict(cls, *args, **kwargs):  # noqa: ANN001, ANN206 - transformers' signature
        # A saved DyT config says model_type "dytune"; read it as the base type it wraps (the base class
        # would warn "model of type dytune to instantiate a model of type llama", which no user can act on).
        config_dict, kwargs = base.get_config_dict.__func__(cls, *args, **kwargs)
        if config_dict.get("model_type") == MODEL_TYPE:
            wrapped = (config_dict.get("dyt") or {}).get("base_model_type")
            if wrapped != base.model_type:
                raise DytuneError(f"this dytune checkpoint wraps model type {wrapped!r}, not {base.model_type!r}: "
                                  "load it with AutoModelForCausalLM or dytune.load")
            config_dict = {**config_dict, "model_type": base.model_type}
        return config_dict, kwargs

    cls = type(f"DyT{base.__name__}", (base,), {"_is_dytune": True, "to_dict": to_dict,
                                                "get_config_dict": get_config_dict, "__module__": __name__})
    _CONFIG_CLASSES[base] = cls
    return cls


def _dyt_model_class(base: type) -> type:
    """The DyT twin of a causal-LM class: rebuilds DyT layers from `config.dyt` in `__init__`."""
    if base in _MODEL_CLASSES:
        return _MODEL_CLASSES[base]
    if getattr(base, "_is_dytune", False):
        return base

    def __init__(self, config, *args, **kwargs):  # noqa: ANN001
        base.__init__(self, config, *args, **kwargs)
        build_dyt_layers(self, config.dyt)

    @classmethod
    def from_pretrained(cls, *args, dytune_strict: bool | None = None, **kwargs):  # noqa: ANN001, ANN206
        """transformers' `from_pretrained`, but a weight missing from, unexpected in or mismatched with the
        checkpoint is a `DytuneError` naming the keys (transformers only prints a report and initialises the
        missing ones at random). `dytune_strict=False` opts out."""
        wants_info = kwargs.pop("output_loading_info", False)
        location = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        try:
            model, info = base.from_pretrained.__func__(cls, *args, output_loading_info=True, **kwargs)
        except DytuneError as err:  # e.g. a dyt block naming a layer the model lacks: say which checkpoint
            raise DytuneError(f"{location}: {err}") from None
        strict = (not _LENIENT_LOADS.get()) if dytune_strict is None else dytune_strict
        if strict:
            check_loading_info(info, location)
        return (model, info) if wants_info else model

    keep = list(getattr(base, "_keep_in_fp32_modules", None) or [])
    cls = type(f"DyT{base.__name__}", (base,), {
        "_is_dytune": True, "__init__": __init__, "from_pretrained": from_pretrained,
        "_keep_in_fp32_modules": keep, "__module__": __name__,
    })
    _share_key_renames(base, cls)
    _MODEL_CLASSES[base] = cls
    return cls


def _share_key_renames(base: type, dyt_cls: type) -> None:
    """Give a DyT class the checkpoint key renames transformers applies to its base class.

    transformers 5 renames keys on load and reverses the renames on save (GPT-NeoX: `embed_out` <->
    `lm_head`), looked up by class name, then by `model_type`, and skips classes defined outside
    transformers unless their name or type was registered. Without this a converted Pythia saves
    `embed_out.weight` and reloads with a random `lm_head`.
    """
    from transformers import conversion_mapping as mapping

    if base.is_custom_code():  # remote code: transformers applies no renames to the base either
        return
    by_class = mapping.get_checkpoint_conversion_mapping(base.__name__)
    if by_class is not None:
        mapping.register_checkpoint_conversion_mapping(dyt_cls.__name__, by_class, overwrite=True)
        return
    model_type = getattr(base.config_class, "model_type", None)
    by_type = mapping.get_checkpoint_conversion_mapping(model_type) if model_type else None
    if by_type is not None and model_type not in mapping.USER_REGISTERED_MAPPINGS:
        # re-registering the type's own renames marks them as applying to non-transformers classes too
        mapping.register_checkpoint_conversion_mapping(model_type, by_type, overwrite=True)


_LENIENT_LOADS: contextvars.ContextVar[bool] = contextvars.ContextVar("dytune_lenient_loads", default=False)


@contextmanager
def lenient_loads() -> Iterator[None]:
    """Within this block, loading a DyT checkpoint with missing or unexpected weights does not raise."""
    token = _LENIENT_LOADS.set(True)
    try:
        yield
    finally:
        _LENIENT_LOADS.reset(token)


def check_loading_info(info: dict, location: object = None) -> None:
    """Raise a `DytuneError` naming every weight transformers did not load exactly (its `output_loading_info`)."""
    problems = []
    for key, what in (("missing_keys", "missing from the checkpoint (would be newly initialised)"),
                      ("unexpected_keys", "in the checkpoint but not in the model"),
                      ("mismatched_keys", "of the wrong shape")):
        keys = sorted(str(k[0] if isinstance(k, tuple) else k) for k in (info.get(key) or []))
        if keys:
            shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
            problems.append(f"{len(keys)} weight(s) {what}: {shown}")
    errors = [str(e) for e in (info.get("error_msgs") or [])]
    if errors:
        problems.append("load errors: " + "; ".join(errors[:3]))
    if problems:
        where = f" {location}" if location is not None else ""
        raise DytuneError(f"the checkpoint{where} does not match its model exactly: " + "; ".join(problems)
                          + ". The model would be silently wrong, so it was not returned; re-save it with "
                          "dytune.save, or pass strict=False (dytune.load) / dytune_strict=False "
                          "(from_pretrained) to load it anyway")


def _register_pair(config_cls: type, model_cls: type) -> None:
    model_cls.config_class = config_cls
    try:
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
    except TypeError:  # older signature without exist_ok
        AutoModelForCausalLM.register(config_cls, model_cls)


class DyTuneConfig(PretrainedConfig):
    """Entry point registered for `model_type: "dytune"`; dispatches to the base architecture's config.

    `from_dict` returns an instance of `DyT<Base>Config` (a subclass of the base config), so every
    architecture-specific field and behaviour is the base's own.
    """

    model_type = MODEL_TYPE

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        check_dyt_block(config_dict.get("dyt"), config_dict.get("_name_or_path") or None)
        base_type = config_dict["dyt"]["base_model_type"]
        base_config_cls = CONFIG_MAPPING[base_type]
        config_cls = _dyt_config_class(base_config_cls)
        base_model_cls = _causal_lm_class(base_type, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
        _register_pair(config_cls, _dyt_model_class(base_model_cls))
        config_dict = {**config_dict, "model_type": base_type}
        return base_config_cls.from_dict.__func__(config_cls, config_dict, **kwargs)


def check_dyt_block(dyt: object, location: object = None) -> None:
    """A `DytuneError` unless a config's `dyt` block names a base type transformers has a causal LM for, and
    a list of layers each with the fields `build_dyt_layers` reads."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    where = f"{location}: " if location else ""
    hand = "it was not written by dytune, or was edited by hand; convert the original model again"
    if not isinstance(dyt, dict) or "base_model_type" not in dyt:
        raise DytuneError(f"{where}config.json says model_type 'dytune' but has no 'dyt' block with "
                          f"base_model_type: {hand}")
    base_type = dyt["base_model_type"]
    if base_type not in CONFIG_MAPPING or base_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        import transformers

        raise DytuneError(f"{where}this DyT model wraps model type {base_type!r}, for which transformers "
                          f"{transformers.__version__} has no causal LM: upgrade transformers (or, if the config "
                          "was edited by hand, convert the original model again)")
    layers = dyt.get("layers")
    fields = ("name", "hidden_size", "per_channel", "bias")
    if not isinstance(layers, list) or not layers or not all(
            isinstance(layer, dict) and all(key in layer for key in fields) for layer in layers):
        raise DytuneError(f"{where}config.json's dyt block has no valid 'layers' list (each entry needs "
                          f"{', '.join(fields)}): {hand}")
    forms = sorted({str(layer.get("form", "tanh")) for layer in layers} - set(FORMS))
    if forms:
        raise DytuneError(f"{where}config.json's dyt block names DyT form(s) {', '.join(forms)}, which this dytune "
                          f"does not know (it knows {', '.join(FORMS)}): upgrade dytune, or convert the original "
                          "model again")


def _causal_lm_class(base_type: str, names: dict) -> type:
    import transformers

    name = names.get(base_type)
    if name is None:
        raise ValueError(f"transformers has no causal-LM class for model type {base_type!r}")
    return getattr(transformers, name)


def register() -> None:
    """Register the dytune model type with the Auto classes (idempotent; run when this module is imported)."""
    try:
        AutoConfig.register(MODEL_TYPE, DyTuneConfig, exist_ok=True)
    except TypeError:
        AutoConfig.register(MODEL_TYPE, DyTuneConfig)
    _allow_peft_auto_mapping()


def _allow_peft_auto_mapping() -> None:
    """Let PEFT's `AutoPeftModelForCausalLM` import the DyT class an adapter without `task_type` names.

    Such an adapter records its base class as `dytune.hf_registration.DyT<Base>ForCausalLM`, and PEFT only
    imports classes from an allowlist (default: transformers, diffusers, ...). It offers no registration
    hook, so dytune, already imported, adds itself to the default list.
    """
    try:
        import peft.auto
    except ImportError:  # PEFT not installed: nothing to allow
        return
    default = peft.auto.get_default_import_allowlist
    if getattr(default, "_with_dytune", False):
        return

    def with_dytune() -> list[str]:
        return [*default(), "dytune"]

    with_dytune._with_dytune = True
    peft.auto.get_default_import_allowlist = with_dytune


def __getattr__(name: str) -> type:
    # PEFT's adapter config names the base model class by module and name; DyT classes are made on demand.
    import transformers
    from transformers import PreTrainedModel

    base = getattr(transformers, name[len("DyT"):], None) if name.startswith("DyT") else None
    if isinstance(base, type) and issubclass(base, PreTrainedModel):
        return _dyt_model_class(base)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dyt_aware_init(model: nn.Module) -> None:
    """Teach every PreTrainedModel inside `model` (the LM and its inner base model) to initialise DyT.

    transformers 5 initialises each module with the `_init_weights` of its nearest enclosing
    PreTrainedModel (e.g. `LlamaModel`, not the LM head class), which knows nothing of DyT and would leave
    alpha as uninitialised memory; an instance attribute overrides it at every level.
    """
    from transformers import PreTrainedModel

    for sub in model.modules():
        if isinstance(sub, PreTrainedModel) and "_init_weights" not in vars(sub):
            class_init = type(sub)._init_weights

            def _init_weights(module, _sub=sub, _class_init=class_init):  # noqa: ANN001
                if isinstance(module, DyT):
                    module.reset_parameters()
                else:
                    _class_init(_sub, module)

            sub._init_weights = _init_weights


def build_dyt_layers(model: nn.Module, spec: dict) -> None:
    """Replace the norms named in a `config.dyt` spec with (freshly initialised) DyT layers."""
    for layer in spec["layers"]:
        parent_name, _, child = layer["name"].rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            parent = None
        if parent is None or not isinstance(getattr(parent, child, None), nn.Module):
            raise DytuneError(f"config.json's dyt block names layer {layer['name']!r}, which this "
                              f"{type(model).__mro__[1].__name__} does not have: the config was edited by hand or "
                              "belongs to another model; convert the original model again")
        # form/center absent: a checkpoint from before the linear form, i.e. tanh
        dyt = DyT(layer["hidden_size"], alpha_init=layer.get("alpha_init", 1.0),
                  per_channel=layer["per_channel"], bias=layer["bias"], form=layer.get("form", "tanh"),
                  center=layer.get("center", False))
        setattr(parent, child, dyt)
    _dyt_aware_init(model)


def is_dyt_model(model: nn.Module) -> bool:
    return getattr(type(model), "_is_dytune", False)


def site_kinds(config) -> dict[str, str]:  # noqa: ANN001
    """{converted site name: its kind (attention, mlp, final, embedding, ...)} from a converted `config.dyt`
    ({} for a model that was never converted)."""
    spec = getattr(config, "dyt", None) or {}
    return {layer["name"]: layer["kind"] for layer in spec.get("layers", [])}


def mark_converted(model: nn.Module, *, sites, report) -> None:  # noqa: ANN001
    """Re-class a freshly converted model and its config so that saving and reloading keep DyT."""
    config = model.config
    spec_layers = []
    for site in sites:
        dyt = model.get_submodule(site.name)
        spec_layers.append({"name": site.name, "kind": site.kind, "norm_type": site.norm_type,
                            "hidden_size": site.hidden_size, "per_channel": dyt.per_channel,
                            "bias": dyt.bias is not None, "form": dyt.form, "center": dyt.center,
                            "alpha_init": float(dyt.alpha.detach().mean())})
    config.__class__ = _dyt_config_class(type(config))
    config.dyt = {
        "base_model_type": type(config).__mro__[1].model_type,
        "form": getattr(report, "form", "dyt"),
        "alpha_init": report.alpha_init,
        "per_channel": report.per_channel,
        "kinds": list(report.kinds),
        "refit": getattr(report, "refit", "none"),
        "source": getattr(config, "_name_or_path", "") or "",
        "layers": spec_layers,
    }
    if getattr(report, "refit_ridge", None) is not None:
        config.dyt["refit_ridge"] = report.refit_ridge
        config.dyt["refit_ridge_to"] = report.refit_ridge_to
    model_cls = _dyt_model_class(type(model))
    _register_pair(type(config), model_cls)
    model.__class__ = model_cls
    _dyt_aware_init(model)


def unmark_converted(model: nn.Module) -> None:
    model.__class__ = type(model).__mro__[1]
    model.config.__class__ = type(model.config).__mro__[1]
    if hasattr(model.config, "dyt"):
        del model.config.dyt


register()
