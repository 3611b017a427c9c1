"""Two processes on CPU (gloo) through `torchrun`: real DDP through Trainer, completes and resumes.

`accelerate launch --num_processes 2 --cpu` silently starts one process, so the world size is asserted here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from dytune.train.callbacks import read_metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(config: Path, *flags: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "dytune.cli", "train", str(config), *flags]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_two_process_ddp_completes_and_resumes(tmp_path, tiny_dir, chat_data) -> None:
    run = tmp_path / "ddp"
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_dir), "data": {"source": str(chat_data), "val_fraction": 0.1,
                                         "cache_dir": str(tmp_path / "cache")},
        "mode": "lora+dyt", "distill": True, "alpha_init": "constant:0.5", "lora_dropout": 0.0,
        "max_steps": 4, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "learning_rate": 5e-3,
        "logging_steps": 1, "save_steps": 2, "eval_steps": 2, "report_to": "none", "disable_tqdm": True,
        "output_dir": str(run), "seed": 1}))
    _torchrun(config)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 4
    assert (run / "checkpoint-2" / "rng_state_1.pth").is_file()  # both processes wrote their RNG state
    first = load_file(str(run / "final" / "model.safetensors"))
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    # drop what happened after checkpoint-2 and resume from it: same weights as the run that went through
    for name in ("checkpoint-4", "final", "adapter"):
        shutil.rmtree(run / name)
    (run / "summary.json").unlink()
    _torchrun(config, "--resume")
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["world_size"] == 2 and resumed["resumed_from"].endswith("checkpoint-2")
    again = load_file(str(run / "final" / "model.safetensors"))
    for key, value in first.items():
        assert (again[key] - value).abs().max() < 1e-5, key
    rows_again = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows_again] == [1, 2, 3, 4]
    for a, b in zip(rows, rows_again):
        assert abs(a["loss"] - b["loss"]) < 1e-5
