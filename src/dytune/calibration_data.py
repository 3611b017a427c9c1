"""Turn a user's calibration file into texts for `dytune.convert`."""

from __future__ import annotations

from pathlib import Path

from dytune.errors import DytuneError


def calibration_texts_from_source(source: str, tokenizer, max_samples: int = 64, seed: int = 0) -> list[str]:  # noqa: ANN001
    """Calibration texts from a .txt file (blank-line separated paragraphs) or any conversation source that
    `dytune.data.load_conversations` reads, rendered with the tokenizer's chat template."""
    path = Path(source)
    if path.suffix == ".txt":
        if not path.is_file():
            raise DytuneError(f"calibration file not found: {path}")
        paragraphs = [p.strip() for p in path.read_text(errors="replace").split("\n\n") if p.strip()]
        if not paragraphs:
            raise DytuneError(f"calibration file {path} has no text")
        return paragraphs[:max_samples]
    from dytune.data import load_conversations

    conversations, _ = load_conversations(source, max_samples=max_samples, seed=seed)
    return [_render(row["messages"], tokenizer) for row in conversations]


def _render(messages: list[dict], tokenizer) -> str:  # noqa: ANN001
    """Render as training will: the tokenizer's template, or dytune's default one for base models."""
    from dytune.data.templates import resolve_template

    template, _ = resolve_template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)
