"""Which chat template renders a conversation, and what it needs from the tokenizer.

Order of choice: a user template (`chat_template=` a file path, a Jinja string, or a name of
`NAMED_TEMPLATES`), else the tokenizer's own template, else `DEFAULT_CHAT_TEMPLATE` for base models without
one (GPT-2, Pythia):

    ### System:\\n{system}\\n\\n            (only when there is a system message)
    ### User:\\n{user}\\n\\n
    ### Assistant:\\n{assistant}<EOS>\\n\\n    (each assistant turn ends with the tokenizer's EOS token)

Plain markers, so no new tokens are needed; the EOS after every answer teaches the model to stop, and the
`{% generation %}` markers around "{assistant}<EOS>" let TRL's `assistant_only_loss` use the same template.

A template that writes special-token-looking literals the tokenizer lacks (ChatML's `<|im_start|>` on GPT-2)
gets them added as special tokens; the caller must then resize the model's embeddings
(`resize_embeddings(model, tokenizer)`) and train the input embeddings and the LM head, since the new rows
start untrained (with LoRA: `modules_to_save=["embed_tokens", "lm_head"]` or the model's equivalents).

Named templates (`chat_template: NAME`), the plain texts of the original DyT study (configs/study/):
  concat             `{user}\n\n{assistant}<EOS>`: the study's LoRA notebooks (`instruction [+ "\n\n" +
                     input] + "\n\n" + output`). They put the loss on every token (`train_on: all`) and padded
                     with EOS, so the collator masked EOS (`mask_eos: true`): the model never learnt to stop.
  prompt-completion  `{user}{assistant}<EOS>`, no separator: TRL's SFTTrainer on prompt/completion columns (the
                     study's Pythia runs), loss on the completion and its EOS (`train_on: assistant`).
Several turns are joined the same way (each answer followed by EOS), a system message comes first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dytune.errors import DytuneError

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '### System:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Assistant:\n' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)
def _plain_template(separator: str) -> str:
    sep = separator.replace("\n", "\\n")
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
        f"{{% if not loop.last %}}{{{{ '{sep}' }}}}{{% endif %}}"
        f"{{% else %}}{{{{ message['content'] + '{sep}' }}}}{{% endif %}}"
        "{% endfor %}"
    )


NAMED_TEMPLATES: dict[str, str] = {
    "default": DEFAULT_CHAT_TEMPLATE,
    "concat": _plain_template("\n\n"),
    "prompt-completion": _plain_template(""),
}
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")
# literals that look like control tokens: <|im_start|>, <|eot_id|>, <start_of_turn>, <end_of_turn>
_CONTROL = re.compile(r"<\|[A-Za-z0-9_.:-]+\|>|<(?:start|end)_of_turn>")


def has_generation_markers(template: str) -> bool:
    return bool(_GENERATION.search(template))


def resolve_template(tokenizer: Any, chat_template: str | Path | None = None) -> tuple[str, str]:
    """(template, origin) with origin one of "user", "tokenizer", "default" or another `NAMED_TEMPLATES` name."""
    if chat_template is not None:
        text = str(chat_template)
        if text == "default":
            return DEFAULT_CHAT_TEMPLATE, "default"
        if text in NAMED_TEMPLATES:
            return NAMED_TEMPLATES[text], text
        if "{{" in text or "{%" in text:
            return text, "user"
        path = Path(text).expanduser()
        if path.is_file():
            return path.read_text(encoding="utf-8"), "user"
        raise DytuneError(f"chat_template {text!r} is neither a file nor a Jinja template (expected a path to a "
                          "`.jinja` file, a string with {{ ... }} / {% ... %}, or one of "
                          f"{', '.join(NAMED_TEMPLATES)})")
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("default") or next(iter(own.values()), None)
    if own:
        return own, "tokenizer"
    if not getattr(tokenizer, "eos_token", None):
        raise DytuneError("the tokenizer has no chat template and no EOS token, so the default template cannot end "
                          "assistant turns: pass chat_template= (a Jinja file or string)")
    return DEFAULT_CHAT_TEMPLATE, "default"


def missing_control_tokens(template: str, tokenizer: Any) -> list[str]:
    """Control-token literals written by the template that the tokenizer would split into pieces."""
    vocab = tokenizer.get_vocab()
    added = set(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    found = dict.fromkeys(_CONTROL.findall(template))
    return [t for t in found if t not in added and t not in vocab]


def add_control_tokens(tokenizer: Any, tokens: list[str]) -> str:
    """Add `tokens` as special tokens; returns the note to show the user."""
    before = len(tokenizer)
    tokenizer.add_tokens(tokens, special_tokens=True)
    return (f"the chat template needs special tokens the tokenizer lacked: added {tokens} (vocabulary {before} -> "
            f"{len(tokenizer)}). Resize the model's embeddings (dytune.data.resize_embeddings(model, tokenizer)) "
            "and train the input embeddings and LM head, whose new rows start untrained; save this tokenizer "
            "with the model")


def resize_embeddings(model: Any, tokenizer: Any) -> list[str]:
    """Grow the model's embeddings to the tokenizer's size (new rows = mean of the old ones).

    Returns the qualified names of the modules that must then train (input embeddings, LM head)."""
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    wanted = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    return [name for name, module in model.named_modules() if id(module) in wanted]
