"""Evaluation: how a DyT model compares with its LayerNorm twin.

    perplexity    validation loss / perplexity through training's data pipeline (`dytune eval --data`)
    harness       lm-evaluation-harness tasks on a loaded model (`dytune eval --tasks`)
    mtbench       two-turn MT-bench answers in FastChat's format (`dytune answer`)
    answers       question / answer files: reading, writing, checking
    pairrm        PairRM ported onto transformers' DeBERTa-v2 classes
    judge         pairwise judging of two answer files (`dytune judge`); winrate: statistics, table, chart
    openai_judge  FastChat single-answer grading by an OpenAI-compatible server
    speed         prefill / decode throughput and the norm vs DyT microbenchmark (`dytune bench`)

Names below load their module on first use, so `import dytune.eval` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "evaluate_loss": "perplexity", "evaluate_models": "perplexity", "token_loss": "perplexity",
    "run_tasks": "harness",
    "GenerationSettings": "mtbench", "generate_answers": "mtbench", "answer_questions": "mtbench",
    "load_questions": "answers", "load_answers": "answers", "default_questions_path": "answers",
    "PairRM": "pairrm", "PairRMJudge": "pairrm", "tokenize_pair": "pairrm",
    "judge_answers": "judge", "make_judge": "judge", "RewardModelJudge": "judge",
    "summarize": "winrate", "Verdict": "winrate",
    "OpenAIJudge": "openai_judge",
    "BenchSettings": "speed", "bench_models": "speed", "bench_norm_layers": "speed", "run_bench": "speed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"dytune.eval.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'dytune.eval' has no attribute {name!r}")
