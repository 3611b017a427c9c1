"""Calibration data for `dytune.convert`: a user's file (or the built-in text) -> texts -> token batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    return [render_chat(row["messages"], tokenizer) for row in conversations]


def render_chat(messages: list[dict], tokenizer) -> str:  # noqa: ANN001
    """Render as training will: the tokenizer's template, or dytune's default one for base models."""
    from dytune.data.templates import resolve_template

    template, _ = resolve_template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)


def calibration_batches(model: Any, tokenizer: Any, calibration: Sequence[str] | Sequence[dict] | None,
                        max_length: int, batch_size: int = 4) -> list[dict]:
    """Token batches from texts (list[str]), ready batches (list of dicts), or the built-in text."""
    from dytune.conversion.builtin_text import builtin_calibration_texts

    if calibration is not None and len(calibration) and isinstance(calibration[0], dict):
        return list(calibration)
    if tokenizer is None:
        raise DytuneError("calibrated alpha needs a tokenizer (tokenizer=...) or pre-tokenized calibration "
                          "batches; or use alpha_init='paper' / 'constant:VALUE'")
    texts = list(calibration) if calibration is not None else builtin_calibration_texts(tokenizer)
    config = getattr(model, "config", None)
    max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if max_positions:
        max_length = min(max_length, int(max_positions))
    if not texts:
        raise DytuneError("calibration data is empty: give at least one text")
    batches = []
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length)
            batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    finally:
        tokenizer.padding_side = pad_side
    return batches
