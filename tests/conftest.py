"""Shared pytest set-up: repo paths, the shared data folder, and a clear skip reason when it is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DYTUNE_SHARED_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data folder {SHARED_DATA} not found (set DYTUNE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; with two, OpenMP stalls whenever other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
