"""Fixtures for the training tests: a tiny chat model directory, a small conversation file, quick configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dytune.testing import tiny_model, tiny_tokenizer

ANSWERS = ["The capital of France is Paris.", "Eat a balanced diet, exercise, and sleep well.",
           "def add(a, b):\n    return a + b", "Dynamic Tanh replaces LayerNorm with an elementwise tanh."]


def conversations(n: int = 48) -> list[dict]:
    return [{"id": f"c{i}", "messages": [{"role": "user", "content": f"Question {i}: tell me something."},
                                         {"role": "assistant", "content": ANSWERS[i % 4] * (1 + i % 2)}]}
            for i in range(n)]


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "chats.json"
    path.write_text(json.dumps(conversations()))
    return path


def save_tiny(path: Path, arch: str = "llama") -> Path:
    tiny_model(arch).save_pretrained(path)
    tiny_tokenizer(chat_template=True).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture
def quick(tmp_path, tiny_dir, chat_data):
    """`quick(**overrides)` -> a TrainConfig for a few-step run on the tiny model."""
    from dytune.train import TrainConfig

    def make(**overrides):
        values = dict(model=str(tiny_dir), data={"source": str(chat_data), "val_fraction": 0.1,
                                                 "cache_dir": str(tmp_path / "cache")},
                      output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4,
                      learning_rate=1e-2, logging_steps=1, eval_steps=2, save_steps=2, report_to="none",
                      disable_tqdm=True, seed=0, alpha_init="constant:0.5")
        values.update(overrides)
        return TrainConfig(**values)

    return make
