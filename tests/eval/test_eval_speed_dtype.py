"""`dytune eval --dtype bfloat16`: the model runs in bf16 (DyT parameters stay float32) and the loss stays close
to float32's."""

from __future__ import annotations

import copy
import json

import pytest

import dytune
from dytune.cli import main


def test_eval_bfloat16_matches_float32_loss(tiny_chat_dir, tmp_path):
    from dytune.testing import tiny_model, tiny_tokenizer

    dyt_dir = tmp_path / "dyt"
    model = copy.deepcopy(tiny_model("llama"))
    dytune.convert(model, alpha_init="constant:0.8", progress=False)
    dytune.save(model, dyt_dir, tiny_tokenizer(chat_template=True))
    data = tmp_path / "chats.json"
    data.write_text(json.dumps([{"messages": [{"role": "user", "content": f"Question {i}: tell me something."},
                                              {"role": "assistant", "content": "The capital of France is Paris."}]}
                                for i in range(8)]))
    losses = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / f"{dtype}.json"
        assert main(["eval", str(tiny_chat_dir), str(dyt_dir), "--data", str(data), "--split", "all",
                     "--dtype", dtype, "--out", str(out)]) == 0
        losses[dtype] = json.loads(out.read_text())["loss"]
    f32, b16 = (_assistant_losses(losses[d]) for d in ("float32", "bfloat16"))
    assert len(f32) == len(b16) == 2
    for a, b in zip(f32, b16):
        assert b == pytest.approx(a, rel=0.02)  # bf16 rounding: within 2% of the float32 loss
        assert a != b  # the dtype really changed


def _assistant_losses(result: dict) -> list[float]:
    return [float(row["assistant"]["loss"]) for row in result["models"]]
