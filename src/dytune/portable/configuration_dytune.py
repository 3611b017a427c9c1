"""Configuration of a DyT (Dynamic Tanh) model, for loading it without dytune installed.

Written next to the weights by `dytune.save(..., portable=True)`; transformers imports it through config.json's
`auto_map` when a user passes `trust_remote_code=True`. Self-contained: it needs only transformers.

config.json says `model_type: "dytune"` plus a `dyt` block; at run time the config is the base architecture's
own config (a subclass of it, with the base `model_type`), so generation and attention code see the base model.
"""

from transformers.models.auto.configuration_auto import CONFIG_MAPPING

BASE_MODEL_TYPE = "llama"  # replaced by dytune.save(portable=True) with the converted model's architecture
SAVED_MODEL_TYPE = "dytune"

if BASE_MODEL_TYPE not in CONFIG_MAPPING:
    raise ImportError(f"this DyT model wraps the {BASE_MODEL_TYPE!r} architecture, which this version of "
                      "transformers does not have: upgrade transformers")
_BaseConfig = CONFIG_MAPPING[BASE_MODEL_TYPE]


def _to_dict(self):
    out = _BaseConfig.to_dict(self)
    out["model_type"] = SAVED_MODEL_TYPE
    return out


@classmethod
def _get_config_dict(cls, *args, **kwargs):
    # read the saved "dytune" type as the base type (the base class would warn that the types differ)
    config_dict, kwargs = _BaseConfig.get_config_dict.__func__(cls, *args, **kwargs)
    if config_dict.get("model_type") == SAVED_MODEL_TYPE:
        wrapped = (config_dict.get("dyt") or {}).get("base_model_type")
        if wrapped != BASE_MODEL_TYPE:
            raise ValueError(f"this DyT checkpoint's config wraps {wrapped!r} but its code wraps "
                             f"{BASE_MODEL_TYPE!r}: the directory was edited by hand; re-save it with dytune")
        config_dict = {**config_dict, "model_type": BASE_MODEL_TYPE}
    return config_dict, kwargs


# Named like dytune's own class (DyT<Base>Config) so that both describe the same model.
DyTuneConfig = type(f"DyT{_BaseConfig.__name__}", (_BaseConfig,), {
    "to_dict": _to_dict, "get_config_dict": _get_config_dict, "__module__": __name__,
    "__doc__": f"{_BaseConfig.__name__} of a model whose norms are Dynamic Tanh (the `dyt` attribute lists them).",
})
