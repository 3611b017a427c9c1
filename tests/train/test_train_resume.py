"""SIGKILL between checkpoints (gradient accumulation 2, LoRA dropout on, distillation on), then --resume: the loss
curve and the weights match a run that never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from dytune.train.callbacks import read_metrics

JOB = r'''
import json, sys, time, torch
torch.set_num_threads(1)
from transformers import TrainerCallback
from dytune.train import TrainConfig, train

class Slow(TrainerCallback):  # gives the test time to kill the run between checkpoints
    def __init__(self, after): self.after = after
    def on_step_end(self, args, state, control, **kw):
        if self.after and state.global_step >= self.after:
            time.sleep(1.0)

values = json.loads(sys.argv[1])
slow = values.pop("slow_after", 0)
train(TrainConfig(**values), callbacks=[Slow(slow)])
'''


def _values(tiny_dir: Path, chat_data: Path, tmp_path: Path, out: str, **extra) -> dict:
    return dict(model=str(tiny_dir), data={"source": str(chat_data), "val_fraction": 0.1,
                                           "cache_dir": str(tmp_path / "cache")},
                output_dir=str(tmp_path / out), mode="lora+dyt", distill=True, lora_dropout=0.1,
                alpha_init="constant:0.5", max_steps=6, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                learning_rate=5e-3, logging_steps=1, save_steps=2, save_total_limit=2, eval_strategy="no",
                report_to="none", disable_tqdm=True, seed=3, **extra)


def _start(script: Path, values: dict) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, str(script), json.dumps(values)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> None:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_dir, chat_data) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    reference = _start(script, _values(tiny_dir, chat_data, tmp_path, "ref"))
    _finish(reference)

    killed_dir = tmp_path / "killed"
    proc = _start(script, {**_values(tiny_dir, chat_data, tmp_path, "killed"), "slow_after": 2})
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until checkpoint-2 exists and step 3 is under way
        rows = read_metrics(killed_dir / "metrics.jsonl") if (killed_dir / "metrics.jsonl").exists() else []
        if (killed_dir / "checkpoint-2").is_dir() and any(r.get("step") == 3 for r in rows):
            break
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "checkpoint-4").exists() and not (killed_dir / "final").exists()
    assert (killed_dir / "checkpoint-2" / "optimizer.pt").is_file()  # complete, or it would not be there

    _finish(_start(script, {**_values(tiny_dir, chat_data, tmp_path, "killed"), "resume": True}))

    ref_rows = [r for r in read_metrics(tmp_path / "ref" / "metrics.jsonl") if "loss" in r]
    got_rows = [r for r in read_metrics(killed_dir / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in got_rows] == [1, 2, 3, 4, 5, 6]  # one curve, no duplicated steps
    for want, got in zip(ref_rows, got_rows):
        assert abs(want["loss"] - got["loss"]) < 1e-5, (want["step"], want["loss"], got["loss"])
        assert abs(want["grad_norm"] - got["grad_norm"]) < 1e-5 * max(1.0, want["grad_norm"])
    for name in ("adapter/adapter_model.safetensors", "final/model.safetensors"):
        want, got = load_file(str(tmp_path / "ref" / name)), load_file(str(killed_dir / name))
        assert want.keys() == got.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    summary = json.loads((killed_dir / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["global_step"] == 6
