"""Wall time of the linear-refit conversion of SmolLM2-135M, for two source trees side by side.

    git worktree add /tmp/before <commit>
    python benchmarks/conversion_speed.py --trees /tmp/before . --repeats 2

Each run is a fresh process (one thread) that converts with `calibration_refit: linear`, sink weight 30, on the first
`--texts` ShareGPT conversations of the recovery benchmark's training file at 192 tokens, then computes the logits of
one text; runs alternate between the trees, so both see the same load. Writes the seconds and the largest logit
difference against the first tree to benchmarks/results/conversion_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUN = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[1] + "/src")
torch.set_num_threads(1)
import dytune
from dytune.conversion.calibration_data import render_chat
from dytune.conversion.config import ConvertConfig
tok = dytune.load_tokenizer("smollm2-135m")
model = dytune.load("smollm2-135m")
rows = [json.loads(line) for line in open(sys.argv[3])][: int(sys.argv[4])]
texts = [render_chat(row["messages"], tok) for row in rows]
config = ConvertConfig(alpha_init="calibrated", calibration_refit="linear", sink_weight=30.0,
                       calibration_max_tokens=16384, calibration_max_length=192)
start = time.perf_counter()
dytune.convert(model, config, tokenizer=tok, calibration=texts, progress=False)
seconds = time.perf_counter() - start
with torch.no_grad():
    torch.save(model(input_ids=tok(texts[0], return_tensors="pt").input_ids[:, :64]).logits, sys.argv[2])
print(json.dumps({"seconds": seconds}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", nargs=2, required=True, help="two source trees (before, after)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--texts", type=int, default=32)
    parser.add_argument("--sharegpt", default="runs/recovery/sharegpt.jsonl",
                        help="the recovery benchmark's training conversations (benchmarks/recovery.py writes it)")
    parser.add_argument("--out", default="benchmarks/results/conversion_speed.json")
    args = parser.parse_args()
    import torch

    seconds: dict[str, list[float]] = {tree: [] for tree in args.trees}
    diffs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            logits = []
            for i, tree in enumerate(args.trees):
                path = f"{tmp}/{repeat}-{i}.pt"
                out = subprocess.run([sys.executable, "-c", RUN, str(Path(tree).resolve()), path, args.sharegpt,
                                      str(args.texts)], capture_output=True, text=True, check=True).stdout
                seconds[tree].append(json.loads(out.strip().splitlines()[-1])["seconds"])
                logits.append(torch.load(path))
                print(f"{tree}: {seconds[tree][-1]:.1f} s", flush=True)
            diffs.append(float((logits[0] - logits[1]).abs().max()))
    before, after = (statistics.median(seconds[t]) for t in args.trees)
    result = {"trees": args.trees, "texts": args.texts, "seconds": seconds, "speedup": before / after,
              "max_logit_difference": max(diffs)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
