"""dytune: convert Hugging Face causal LMs to Dynamic Tanh (DyT), post-train them, and compare.

    import dytune
    model = dytune.load("smollm2-135m")
    report = dytune.convert(model, tokenizer=dytune.load_tokenizer("smollm2-135m"))
    dytune.save(model, "smollm2-dyt", tokenizer)

Importing dytune registers the DyT model type with transformers' Auto classes, so saved DyT checkpoints
load with `AutoModelForCausalLM.from_pretrained` in any process that imported dytune.
"""

from dytune import hf_registration as _hf_registration  # noqa: F401 - registers the "dytune" model type
from dytune.convert import ConversionReport, convert, dyt_modules, revert
from dytune.dyt import DyT
from dytune.errors import DytuneError
from dytune.models import EMBEDDED_DEFAULT, load_model, load_tokenizer
from dytune.norms import find_norms
from dytune.saving import load, save

__version__ = "0.1.0"

__all__ = [
    "ConversionReport", "DyT", "DytuneError", "EMBEDDED_DEFAULT", "convert", "dyt_modules", "find_norms",
    "load", "load_model", "load_tokenizer", "revert", "save", "__version__",
]
