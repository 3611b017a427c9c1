"""A DyT (Dynamic Tanh) causal LM, for loading it without dytune installed.

Written next to the weights by `dytune.save(..., portable=True)`; transformers imports it through config.json's
`auto_map` when a user passes `trust_remote_code=True`:

    model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)

Self-contained (torch and transformers only): the model is the base architecture's own causal-LM class with
the norms listed in `config.dyt` replaced by DyT, `y = weight * tanh(alpha * x) + bias` (Zhu et al.,
"Transformers without Normalization", CVPR 2025), or, for a layer of form "linear" (FakeLN, a fixed scale),
`y = weight * (alpha * xc) + bias` with xc = x less its mean where `center`. It computes exactly what dytune's
DyT computes.
"""

import torch
import transformers
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from .configuration_dytune import BASE_MODEL_TYPE, DyTuneConfig

_BaseModel = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[BASE_MODEL_TYPE])


class DyT(nn.Module):
    """Dynamic Tanh over the last dimension; parameters stay float32 and the formula runs in float32 whatever
    dtype the model is cast to (in bf16 a small alpha update would round away)."""

    def __init__(self, normalized_shape, alpha_init=1.0, per_channel=False, bias=True, form="tanh", center=False):
        super().__init__()
        if form not in ("tanh", "linear"):
            raise ValueError(f"unknown DyT form {form!r} in config.dyt: this model needs a newer dytune to load")
        self.form, self.center = form, bool(center)
        self.normalized_shape = int(normalized_shape)
        self.per_channel = bool(per_channel)
        size = self.normalized_shape if per_channel else 1
        values = [float(v) for v in (alpha_init if isinstance(alpha_init, (list, tuple)) else [alpha_init])]
        self.alpha_init = values * size if len(values) == 1 else values
        self.alpha = nn.Parameter(torch.empty(size, dtype=torch.float32))
        self.weight = nn.Parameter(torch.empty(self.normalized_shape, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(self.normalized_shape, dtype=torch.float32)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            self.alpha.copy_(torch.tensor(self.alpha_init, dtype=torch.float32, device=self.alpha.device))
            self.weight.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x):
        if self.form == "linear":
            xf = x.float()
            if self.center:
                xf = xf - xf.mean(-1, keepdim=True)
            y = self.weight * (self.alpha * xf)
        else:
            y = torch.tanh(self.alpha * x.float()) * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def _apply(self, fn, recurse=True):
        # keep float32 under model.to(bfloat16), from the float32 originals; device moves still apply
        originals = {name: t.data for name, t in self._parameters.items() if t is not None and t.dtype == torch.float32}
        super()._apply(fn, recurse)
        for name, tensor in self._parameters.items():
            if tensor is not None and name in originals and tensor.dtype != torch.float32:
                tensor.data = originals[name].to(device=tensor.device, dtype=torch.float32)
        return self

    def extra_repr(self):
        return (f"{self.normalized_shape}, per_channel={self.per_channel}, bias={self.bias is not None}, "
                f"form={self.form}" + (f", center={self.center}" if self.form == "linear" else ""))


def _dyt_aware_init(model):
    # transformers initialises each module with the `_init_weights` of its nearest enclosing PreTrainedModel,
    # which knows nothing of DyT; an instance attribute at every level initialises DyT itself.
    for sub in model.modules():
        if isinstance(sub, transformers.PreTrainedModel) and "_init_weights" not in vars(sub):
            class_init = type(sub)._init_weights

            def _init_weights(module, _sub=sub, _class_init=class_init):
                if isinstance(module, DyT):
                    module.reset_parameters()
                else:
                    _class_init(_sub, module)

            sub._init_weights = _init_weights


def _init(self, config, *args, **kwargs):
    _BaseModel.__init__(self, config, *args, **kwargs)
    for layer in config.dyt["layers"]:
        parent_name, _, child = layer["name"].rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        setattr(parent, child, DyT(layer["hidden_size"], alpha_init=layer.get("alpha_init", 1.0),
                                   per_channel=layer["per_channel"], bias=layer["bias"],
                                   form=layer.get("form", "tanh"), center=layer.get("center", False)))
    _dyt_aware_init(self)


@classmethod
def _from_pretrained(cls, *args, **kwargs):
    # a weight missing, unexpected or of the wrong shape would make the model silently wrong: refuse it
    wants_info = kwargs.pop("output_loading_info", False)
    model, info = _BaseModel.from_pretrained.__func__(cls, *args, output_loading_info=True, **kwargs)
    problems = {key: sorted(map(str, info.get(key) or [])) for key in ("missing_keys", "unexpected_keys",
                                                                        "mismatched_keys")}
    problems = {key: keys for key, keys in problems.items() if keys}
    if problems:
        raise ValueError(f"this DyT checkpoint does not match its model exactly ({problems}): it would be "
                         "silently wrong, so it was not loaded")
    return (model, info) if wants_info else model


# Named like dytune's own class (DyT<Base>ForCausalLM): transformers looks checkpoint key renames up by class name.
DyTuneForCausalLM = type(f"DyT{_BaseModel.__name__}", (_BaseModel,), {
    "__init__": _init, "from_pretrained": _from_pretrained, "config_class": DyTuneConfig, "__module__": __name__,
    "__doc__": f"{_BaseModel.__name__} whose norms (listed in `config.dyt`) are Dynamic Tanh.",
})


def _share_key_renames():
    # transformers 5 renames some checkpoints' keys on load (GPT-NeoX: embed_out -> lm_head), by class name or
    # model_type, but skips remote-code classes unless their name was registered: register the base's renames.
    try:
        from transformers import conversion_mapping as mapping
    except ImportError:  # transformers 4: no renames
        return
    renames = mapping.get_checkpoint_conversion_mapping(_BaseModel.__name__)
    if renames is None:
        renames = mapping.get_checkpoint_conversion_mapping(BASE_MODEL_TYPE)
    if renames is not None:
        mapping.register_checkpoint_conversion_mapping(DyTuneForCausalLM.__name__, renames, overwrite=True)


_share_key_renames()
