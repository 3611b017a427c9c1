"""Probe: sequential block reconstruction (dytune.train.reconstruct) on SmolLM2-135M, no end-to-end training.

    python benchmarks/recovery_reconstruct.py --records 64 --steps-per-block 64 --lr 2e-4

Start: the calibrated DyT conversion (alpha-only sequential calibration on the first 64 training Alpaca records,
gamma exact), as the gated-removal arms of benchmarks/recovery.py. Data: the training conversations of the
recovery work directory (prepared by benchmarks/recovery.py: ShareGPT + Alpaca, held-out records excluded);
the held-out CE is on the committed held-out Alpaca ids, as the recovery benchmark measures it. Tokens used for
reconstruction are counted as conversion tokens. Writes benchmarks/results/recovery_reconstruct.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "recovery")
    p.add_argument("--records", type=int, default=64, help="training conversations cached for reconstruction")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--steps-per-block", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--max-grad-norm", type=float, default=0.1)
    p.add_argument("--sink-weight", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--start", type=Path, default=None,
                   help="DyT start directory: loaded if it exists, else converted as above and saved there")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recovery_reconstruct.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import dytune
    from dytune.conversion.calibration_data import calibration_texts_from_source
    from dytune.data import load_conversations, tokenize_conversations
    from dytune.eval.perplexity import token_loss
    from dytune.train.collate import PadCollator
    from dytune.train.reconstruct import reconstruct_blocks
    from dytune.train.teacher import FrozenTeacher

    data = json.loads((args.work / "data.json").read_text())["data"]["paths"]
    tokenizer = dytune.load_tokenizer(args.model)
    original = dytune.load_model(args.model)
    held, _ = load_conversations(data["heldout"])
    held_tokens = tokenize_conversations(held, tokenizer, max_length=args.max_length)

    def heldout_ce(model: torch.nn.Module) -> float:
        return token_loss(model, held_tokens, batch_size=8, pad_id=tokenizer.pad_token_id or 0).loss

    result: dict = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                                "threads": torch.get_num_threads()},
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    result["original_ce"] = heldout_ce(original)
    t = time.time()
    if args.start is not None and (args.start / "config.json").is_file():
        model = dytune.load(str(args.start))
    else:
        model = copy.deepcopy(original)
        calibration = calibration_texts_from_source(data["alpaca_train"], tokenizer, 64)
        dytune.convert(model, tokenizer=tokenizer, calibration=calibration, calibration_refit="none", progress=False)
        if args.start is not None:
            dytune.save(model, args.start, tokenizer)
    result["convert_s"] = time.time() - t
    result["converted_ce"] = heldout_ce(model)
    print(f"original {result['original_ce']:.3f}, converted {result['converted_ce']:.3f}", file=sys.stderr)

    mix = load_conversations([data["alpaca_train"], data["sharegpt"]], max_samples=args.records, seed=0)[0]
    rows = tokenize_conversations(mix, tokenizer, max_length=args.max_length)
    collate = PadCollator(pad_id=tokenizer.pad_token_id or 0)
    cols = rows.select_columns(["input_ids", "attention_mask"]).to_list()
    batches = [collate(cols[i:i + args.batch]) for i in range(0, len(cols), args.batch)]
    t = time.time()
    summary = reconstruct_blocks(model, FrozenTeacher(original), batches, steps_per_block=args.steps_per_block,
                                 lr=args.lr, max_grad_norm=args.max_grad_norm, sink_weight=args.sink_weight)
    result["reconstruct_s"] = time.time() - t
    result["reconstruction"] = summary
    result["reconstructed_ce"] = heldout_ce(model)
    result["gap"] = result["reconstructed_ce"] - result["original_ce"]
    print(f"reconstructed {result['reconstructed_ce']:.3f} (gap {result['gap']:+.3f}) on {summary['tokens']} tokens "
          f"in {result['reconstruct_s']:.0f}s", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
