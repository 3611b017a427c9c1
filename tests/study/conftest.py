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


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A 2-layer GPT2LMHeadModel (DistilGPT2's classes: Conv1D c_attn/c_proj/c_fc, ln_1/ln_2/ln_f) and a base
    tokenizer with no chat template and EOS only, as DistilGPT2's."""
    path = tmp_path_factory.mktemp("tiny_distilgpt2")
    tiny_model("gpt2").save_pretrained(path)
    tiny_tokenizer(chat_template=False).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_neox_dir(tmp_path_factory) -> Path:
    """A 2-layer GPTNeoXForCausalLM (Pythia's classes, parallel residual, untied head) and a base tokenizer."""
    path = tmp_path_factory.mktemp("tiny_pythia")
    tiny_model("gpt_neox").save_pretrained(path)
    tiny_tokenizer(chat_template=False).save_pretrained(path)
    return path
