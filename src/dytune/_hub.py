"""The Hugging Face Hub and dytune's cache, for model loading (`dytune.models`) and data loading (`dytune.data`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


def cache_root() -> Path:
    """dytune's cache directory (`$DYTUNE_CACHE`, default `~/.cache/dytune`)."""
    return Path(os.environ.get("DYTUNE_CACHE", Path.home() / ".cache" / "dytune"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub (`$HF_ENDPOINT`) answers a TCP connection; False at once under HF_HUB_OFFLINE=1."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False
