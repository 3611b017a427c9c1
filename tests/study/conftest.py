"""Fixtures for the study tests: tiny models shaped like DistilGPT2 and Pythia saved to disk, and local
stand-ins for the RE-WILD rebuild's Hub sources (study_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from study_helpers import MMLU, TULU, WILDCHAT, mmlu_rows, tulu_rows, wildchat_rows, write_parquet

from dytune.testing import tiny_model, tiny_tokenizer


@pytest.fixture(scope="session")
def hub_standins(tmp_path_factory) -> dict[str, str]:
    """{Hub id: a local folder holding a few rows in that dataset's format}."""
    root = tmp_path_factory.mktemp("hub")
    return {WILDCHAT: str(write_parquet(root / "wildchat", wildchat_rows())),
            MMLU: str(write_parquet(root / "mmlu", mmlu_rows())),
            TULU: str(write_parquet(root / "tulu", tulu_rows()))}


def _saved_base_model(tmp_path_factory, name: str, arch: str) -> Path:
    """A tiny `arch` model and a base tokenizer (no chat template, EOS only, as DistilGPT2's and Pythia's), on disk."""
    path = tmp_path_factory.mktemp(name)
    tiny_model(arch).save_pretrained(path)
    tiny_tokenizer(chat_template=False).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """2-layer GPT2LMHeadModel: DistilGPT2's classes (Conv1D c_attn/c_proj/c_fc, ln_1/ln_2/ln_f, tied head)."""
    return _saved_base_model(tmp_path_factory, "tiny_distilgpt2", "gpt2")


@pytest.fixture(scope="session")
def tiny_neox_dir(tmp_path_factory) -> Path:
    """2-layer GPTNeoXForCausalLM: Pythia's classes (parallel residual, untied head)."""
    return _saved_base_model(tmp_path_factory, "tiny_pythia", "gpt_neox")
