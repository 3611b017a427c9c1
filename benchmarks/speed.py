"""Inference speed of a model against its own DyT conversion, interleaved: writes benchmarks/results/speed.json.

    python benchmarks/speed.py                                  # embedded SmolLM2-135M, CPU
    python benchmarks/speed.py --threads 1 --repeats 3 --out benchmarks/results/speed_1thread.json
    python benchmarks/speed.py --device cuda --dtype bfloat16 --fused --out benchmarks/results/speed_gpu.json

Everything after the script name is passed to `dytune bench` (see `dytune bench --help`); this script only
fixes the defaults the README quotes: the embedded SmolLM2-135M-Instruct, `--norm-swap` (its RMSNorms
replaced by DyT; alpha values do not change the cost), batch sizes 1 and 4, prompts of 128 and 512 tokens,
32 decode steps, 1 warm-up and 5 timed rounds, and the norm vs DyT layer microbenchmark at hidden size 576.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dytune.cli import main

DEFAULTS = {"--batch-sizes": "1,4", "--prompt-lengths": "128,512", "--new-tokens": "32", "--repeats": "5",
            "--warmup": "1", "--out": str(Path(__file__).parent / "results" / "speed.json")}

if __name__ == "__main__":
    args = sys.argv[1:]
    n_models = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))  # leading names = models
    models, rest = args[:n_models], args[n_models:]
    argv = ["bench"] + (models or ["smollm2-135m", "--norm-swap"])
    for flag, value in DEFAULTS.items():
        if flag not in rest:
            argv += [flag, value]
    sys.exit(main(argv + rest))
