"""Tiny models and tokenizers built from config, for tests and CI (no downloads).

Each tiny model has 2 layers and a hidden size of 64, in the real architecture's classes, so conversion,
training and evaluation run through the same code paths as on a full-size checkpoint.
"""

from __future__ import annotations

from functools import lru_cache

import torch

# Every architecture the suite's conversion matrix covers (tests/core/test_core_arch_matrix.py).
TINY_ARCHS = ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo2",
              "opt", "falcon", "bloom", "gpt_neo")

_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Normalization layers are everywhere in modern neural networks.",
    "Dynamic Tanh replaces LayerNorm with an elementwise tanh and a learnable scale.",
    "Give three tips for staying healthy. Eat a balanced diet, exercise, and sleep well.",
    "What is the capital of France? The capital of France is Paris.",
    "def add(a, b):\n    return a + b\n",
    "0123456789 +-*/=()[]{}<>!?.,;:'\"",
] * 4


@lru_cache(maxsize=4)
def tiny_tokenizer(chat_template: bool = True):
    """A 320-token byte-level BPE tokenizer trained on a few sentences.

    With `chat_template=True` it has ChatML special tokens and template (like SmolLM2); without, it is a
    base-model tokenizer with only `<|endoftext|>` (like GPT-2).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>"] + (["<|im_start|>", "<|im_end|>"] if chat_template else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_TRAIN_TEXT, trainer=trainer)
    kwargs = dict(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                  bos_token="<|endoftext|>", unk_token=None)
    if chat_template:
        kwargs.update(eos_token="<|im_end|>", bos_token="<|im_start|>",
                      additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast = PreTrainedTokenizerFast(**kwargs)
    if chat_template:
        fast.chat_template = _CHATML
    return fast


def tiny_config(arch: str, vocab_size: int = 320, **overrides):
    """A 2-layer, 64-wide config of the given architecture (`model_type`); `overrides` (e.g.
    `tie_word_embeddings=True`) are passed to the config class."""
    from transformers import AutoConfig

    # id 0 is <|endoftext|> in tiny_tokenizer (Phi-3's default pad id 32000 would not even fit the vocabulary)
    tokens = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  tie_word_embeddings=False)
    per_arch = {
        "gpt2": dict(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=128, n_inner=128),
        "gpt_neox": dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=128, use_parallel_residual=True,
                         tie_word_embeddings=False),
        "llama": common, "qwen2": common, "olmo2": common, "phi3": common,
        "mistral": dict(common, head_dim=16), "qwen3": dict(common, head_dim=16),
        "gemma": dict(common, head_dim=16), "gemma2": dict(common, head_dim=16),
        "opt": dict(vocab_size=vocab_size, hidden_size=64, ffn_dim=128, word_embed_proj_dim=64, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=128),
        "falcon": dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       ffn_hidden_size=128, max_position_embeddings=128),
        "bloom": dict(vocab_size=vocab_size, hidden_size=64, n_layer=2, n_head=4),
        "gpt_neo": dict(vocab_size=vocab_size, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128,
                        max_position_embeddings=128, attention_types=[[["global", "local"], 1]], window_size=16),
    }
    if arch not in per_arch:
        raise ValueError(f"no tiny config for {arch!r}; choose from {TINY_ARCHS}")
    cfg = AutoConfig.for_model(arch, **{**per_arch[arch], **tokens, **overrides})
    for key, value in {**tokens, **overrides}.items():  # some configs take these only as attributes
        setattr(cfg, key, value)
    return cfg


def tiny_model(arch: str = "llama", seed: int = 0, **overrides):
    """A randomly initialised tiny causal LM; norm weights/biases are randomised too so that a conversion
    that drops them is caught."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides), dtype=torch.float32)
    with torch.no_grad():
        for module in model.modules():
            name = type(module).__name__
            if isinstance(module, torch.nn.LayerNorm) or name.endswith(("RMSNorm", "LayerNorm")):
                if getattr(module, "weight", None) is not None:
                    module.weight.uniform_(0.5, 1.5) if "Gemma" not in name else module.weight.uniform_(-0.5, 0.5)
                if getattr(module, "bias", None) is not None:
                    module.bias.uniform_(-0.2, 0.2)
    model.eval()
    return model


def tiny_dyt_checkpoint(arch: str, root, *, alpha_init: str | float = 0.8, norms: str | None = "all",
                        per_channel: bool = False, tokenizer=None, portable: bool = False,  # noqa: ANN001
                        **overrides):
    """The user's path on a tiny model: a plain checkpoint (+ tokenizer) saved in `root/plain`, loaded with `from_pretrained`,
    converted (fast alpha rules only), alphas then scaled per layer to values no initialiser gives (a swapped or
    unloaded alpha shows), saved with `dytune.save` in `root/dyt`. Returns `(converted model, root/"dyt")`."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    import dytune

    root = Path(root)
    tiny_model(arch, **overrides).save_pretrained(root / "plain")
    if tokenizer is not None:
        tokenizer.save_pretrained(root / "plain")
    model = AutoModelForCausalLM.from_pretrained(root / "plain").eval()
    dytune.convert(model, alpha_init=alpha_init, norms=norms, per_channel=per_channel)
    with torch.no_grad():
        for i, (_, dyt) in enumerate(dytune.dyt_modules(model)):
            dyt.alpha.mul_(1.2345 + 0.01 * i)
    dytune.save(model, root / "dyt", tokenizer, portable=portable)
    return model, root / "dyt"


def save_reference(model: torch.nn.Module, path, input_ids: torch.Tensor) -> None:  # noqa: ANN001
    """Save what a reloaded model must reproduce (every tensor, the logits on `input_ids`) for a test to compare
    in another process; a test-only file, never loaded by dytune."""
    with torch.no_grad():
        logits = model(input_ids).logits
    torch.save({"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "logits": logits}, path)


def run_in_fresh_process(code: str, timeout: float = 300, *, with_stderr: bool = False,
                         python_args: tuple[str, ...] = (), env: dict[str, str] | None = None):
    """Run Python `code` in a new interpreter (nothing imported or registered in this one carries over) and
    return its stdout, or `(stdout, stderr)` with `with_stderr`; a non-zero exit fails with the end of its
    stderr. `python_args` go before `-c` (e.g. `-I`); `env` replaces the environment."""
    import subprocess
    import sys
    import textwrap

    out = subprocess.run([sys.executable, *python_args, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise AssertionError(f"fresh process exited {out.returncode}:\n{out.stderr[-3000:]}")
    return (out.stdout, out.stderr) if with_stderr else out.stdout


def run_without_dytune(code: str, timeout: float = 300, *, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Run Python `code` in an interpreter that can import everything this one can except dytune (as on a
    machine where it was never installed); return `(stdout, stderr)`.

    dytune is installed editable, i.e. a `.pth` file puts its source folder on `sys.path`: the interpreter
    starts isolated (`-I -S`: no site, no .pth files, no PYTHONPATH) with this interpreter's path minus every
    folder that holds a `dytune` package. Nothing blocks the import by name, so `import dytune` failing there
    is a real check.
    """
    import os
    import sys
    import textwrap
    from pathlib import Path

    path = [p for p in sys.path if p and not (Path(p) / "dytune").exists()]
    prelude = f"import sys\nsys.path[:] = {path!r}\n"
    return run_in_fresh_process(prelude + textwrap.dedent(code), timeout, with_stderr=True, python_args=("-I", "-S"),
                                env={**os.environ, **(env or {})})
