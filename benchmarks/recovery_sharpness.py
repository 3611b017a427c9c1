"""How sharp is a recovery start? Held-out CE after one Adam-like (sign) step, per parameter group.

    python benchmarks/recovery_sharpness.py                  # after benchmarks/recovery.py has prepared its work dir

Adam's first steps move every weight by about +-lr whatever its gradient's size, so the loss after one sign step
of size s on a group says how large a learning rate that group tolerates. The gradient comes from 8 training
records (Alpaca, never held out); the CE is measured on the held-out records of benchmarks/recovery.py. Compared:
the original model and the DyT starting points that benchmarks/recovery.py converted (`runs/recovery/dyt-*`).

Where the sharpness comes from, for each linear-refit DyT start (the starts whose sharpness is in question):
`depth` is the held-out CE of hybrids that run the DyT blocks 0..L and the original blocks after them (how much of
the gap each depth adds), and `hybrid_layers_0_7` repeats the layers 0-7 sign steps in the hybrid with DyT blocks
0-7 and original blocks 8-29 (is the sharpness in those layers, or in the DyT layers after them?).
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


DEPTHS = [0, 3, 7, 11, 15, 19, 23, 27, 29]  # last DyT block of each hybrid (SmolLM2-135M has 30; deeper ones skipped)


def _layer(name: str) -> int:
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else -1


def _load(path: str):  # noqa: ANN202
    import dytune

    model = dytune.load(path) if Path(path).is_dir() else dytune.load_model(path)
    return model.eval()


def _ce(model, held, pad_id: int) -> float:  # noqa: ANN001
    """Token-weighted CE over the held-out assistant tokens, as recovery.py's evaluation."""
    from dytune.eval.perplexity import token_loss

    with torch.no_grad():
        return token_loss(model, held, batch_size=8, pad_id=pad_id).loss


def hybrid(original, dyt, upto: int):  # noqa: ANN001, ANN201
    """A copy of the original model whose first `upto` decoder blocks are the DyT model's."""
    import copy

    model = copy.deepcopy(original)
    for i in range(upto):
        model.model.layers[i] = copy.deepcopy(dyt.model.layers[i])
    return model.eval()


def sharpness(model, train_batch: dict, held, steps: list[float], pad_id: int, groups: dict | None = None,  # noqa: ANN001
              label: str = "") -> dict:
    def ce() -> float:
        return _ce(model, held, pad_id)

    groups = groups or GROUPS
    base = ce()
    model.zero_grad()
    model(**train_batch).loss.backward()
    signs = {n: p.grad.sign() for n, p in model.named_parameters() if p.grad is not None}
    out = {"ce": base, "after_one_sign_step": {}}
    for group, keep in groups.items():
        for step in steps:
            key = f"{group} @ {step:g}"
            saved = {n: p.detach().clone() for n, p in model.named_parameters() if n in signs and keep(n)}
            with torch.no_grad():
                for n in saved:
                    model.get_parameter(n).sub_(step * signs[n])
                out["after_one_sign_step"][key] = ce() - base
                for n, value in saved.items():
                    model.get_parameter(n).copy_(value)
            print(f"{label}: {key}: {out['after_one_sign_step'][key]:+.3f}", file=sys.stderr, flush=True)
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
    p.add_argument("--starts", default=None,
                   help="comma-separated starts to (re)measure, e.g. original,dyt-ours-linear; the others are kept "
                        "from --out (default: all)")
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
              "models": {}}
    if args.starts:
        wanted = [s.strip() for s in args.starts.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in starts]
        if unknown:
            p.error(f"unknown starts {unknown}; found: {', '.join(starts)}")
        if args.out.is_file():
            old = json.loads(args.out.read_text())
            if (old.get("steps"), old.get("heldout_records")) != (steps, len(held)):
                p.error(f"{args.out} was measured with other steps or held-out records: re-measure all starts")
            result["models"] = old["models"]
        starts = {name: starts[name] for name in wanted}
    original = _load(args.model)
    for name, path in starts.items():
        print(f"== {name}", file=sys.stderr, flush=True)
        model = original if name == "original" else _load(path)
        result["models"][name] = sharpness(model, train_batch, held_tokens, steps, pad_id, label=name)
        if name == "original" or model.config.dyt.get("refit") != "linear":
            continue
        result["models"][name]["depth"] = {
            f"DyT blocks 0-{last}, original after": _ce(hybrid(original, model, last + 1), held_tokens, pad_id)
            for last in DEPTHS if last < len(model.model.layers)}
        result["models"][name]["hybrid_layers_0_7"] = sharpness(
            hybrid(original, model, 8), train_batch, held_tokens, steps, pad_id,
            groups={"projections, layers 0-7": GROUPS["projections, layers 0-7"]}, label=f"{name} hybrid 0-7")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: {g: round(v, 3) for g, v in m["after_one_sign_step"].items()} | m.get("depth", {})
                      for k, m in result["models"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
