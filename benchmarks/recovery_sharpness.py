"""How sharp is a recovery start? Held-out CE after one Adam-like (sign) step, per parameter group.

    python benchmarks/recovery_sharpness.py                  # after benchmarks/recovery.py has prepared its work dir

Adam's first steps move every weight by about +-lr whatever its gradient's size, so the loss after one sign step
of size s on a group says how large a learning rate that group tolerates. The gradient comes from 8 training
records (Alpaca, never held out); the CE is measured on the held-out records of benchmarks/recovery.py. Compared:
the original model and the DyT starting points that benchmarks/recovery.py converted (`runs/recovery/dyt-*`).
Writes benchmarks/results/recovery_sharpness.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {  # name -> predicate over parameter names (Llama-family names: the embedded default model)
    "all": lambda n: True,
    "projections, layers 0-7": lambda n: "proj" in n and _layer(n) in range(0, 8),
    "projections, layers 8-11": lambda n: "proj" in n and _layer(n) in range(8, 12),
    "projections, layers 12-29": lambda n: "proj" in n and _layer(n) in range(12, 30),
    "embeddings and LM head": lambda n: "embed_tokens" in n or "lm_head" in n,
    "norm / DyT parameters": lambda n: "norm" in n,
}


def _layer(name: str) -> int:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else -1


def sharpness(path: str, train_batch: dict, held, steps: list[float], pad_id: int) -> dict:  # noqa: ANN001
    import dytune
    from dytune.eval.perplexity import token_loss

    def ce() -> float:  # token-weighted CE over the held-out assistant tokens, as recovery.py's evaluation
        with torch.no_grad():
            return token_loss(model, held, batch_size=8, pad_id=pad_id).loss

    model = dytune.load(path) if Path(path).is_dir() else dytune.load_model(path)
    model.eval()
    base = ce()
    model.zero_grad()
    model(**train_batch).loss.backward()
    signs = {n: p.grad.sign() for n, p in model.named_parameters() if p.grad is not None}
    out = {"ce": base, "after_one_sign_step": {}}
    for group, keep in GROUPS.items():
        for step in steps:
            key = f"{group} @ {step:g}"
            saved = {n: p.detach().clone() for n, p in model.named_parameters() if n in signs and keep(n)}
            with torch.no_grad():
                for n in saved:
                    model.get_parameter(n).sub_(step * signs[n])
                out["after_one_sign_step"][key] = ce() - base
                for n, value in saved.items():
                    model.get_parameter(n).copy_(value)
            print(f"{path}: {key}: {out['after_one_sign_step'][key]:+.3f}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    import dytune
    from dytune.data import load_conversations, tokenize_conversations
    from dytune.train.collate import PadCollator

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "recovery")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recovery_sharpness.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.work / "heldout.jsonl").is_file():
        p.error(f"{args.work} has no heldout.jsonl: run benchmarks/recovery.py first (it prepares the data)")
    tokenizer = dytune.load_tokenizer(args.model)
    held, _ = load_conversations(str(args.work / "heldout.jsonl"))
    train, _ = load_conversations(str(args.work / "alpaca_train.jsonl"), max_samples=8, seed=0)
    pad_id = tokenizer.pad_token_id or 0
    held_tokens = tokenize_conversations(held, tokenizer, max_length=512)
    train_rows = tokenize_conversations(train, tokenizer, max_length=512).select_columns(["input_ids", "labels"])
    train_batch = PadCollator(pad_id=pad_id)(list(train_rows))
    steps = [1e-6, 1e-5]
    starts = {"original": args.model, **{d.name: str(d) for d in sorted(args.work.glob("dyt-*"))}}
    result = {"machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
              "heldout_records": len(held), "train_records_for_gradient": len(train), "steps": steps,
              "models": {name: sharpness(path, train_batch, held_tokens, steps, pad_id)
                         for name, path in starts.items()}}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: {g: round(v, 3) for g, v in m["after_one_sign_step"].items()}
                      for k, m in result["models"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
