"""Standard benchmarks (hellaswag, arc_easy, ...) through EleutherAI's lm-evaluation-harness.

The model is loaded by dytune (so a DyT directory comes back as a DyT model) and handed to lm-eval as an
object, `HFLM(pretrained=model, tokenizer=tokenizer)`: lm-eval never needs to know what DyT is.
Named `harness` rather than `lm_eval` so that it never shadows the `lm_eval` package.
"""

from __future__ import annotations

import sys

import torch

from dytune.errors import DytuneError

INSTALL_HINT = ("pip install --no-deps lm_eval==0.4.13 sacrebleu portalocker tabulate lxml colorama evaluate "
                "pytablewriter DataProperty mbstrdecoder pathvalidate tabledata tcolorpy 'typepy<2' 'chardet<7' pytz "
                "rouge-score nltk defusedxml scikit-learn narwhals 'joblib<1.6' threadpoolctl sqlitedict "
                "word2number more-itertools")


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise DytuneError(f"--tasks needs lm-evaluation-harness ({err}). Install it without letting pip touch "
                          f"torch: {INSTALL_HINT}") from None
    return lm_eval, HFLM, TaskManager


def run_tasks(model, tokenizer, tasks: list[str], *, num_fewshot: int | None = None, limit: float | None = None,
              batch_size: int = 8, include_path: str | None = None, seed: int = 0) -> dict:
    """Evaluate an already-loaded model on lm-eval tasks; returns `{task: {metric: value}}` plus versions."""
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise DytuneError(f"unknown lm-eval task(s) {unknown}; `lm_eval --tasks list` shows the names, and "
                          "--include-path DIR adds your own task YAML files")
    device = next(model.parameters()).device
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
                                  random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                  fewshot_random_seed=seed, log_samples=False)
    metrics = {}
    for task, values in out["results"].items():
        metrics[task] = {k: v for k, v in values.items() if isinstance(v, (int, float)) and k != "sample_len"}
        metrics[task]["samples"] = values.get("sample_len") or out.get("n-samples", {}).get(task, {}).get("effective")
    return {"results": metrics, "n_shot": out.get("n-shot", {}), "versions": out.get("versions", {}),
            "lm_eval_version": out.get("lm_eval_version")}


def evaluate_tasks(names: list[str], tasks: list[str], *, device: str | None = None,
                   dtype: torch.dtype = torch.float32, progress: bool = True, **kwargs) -> dict:
    from dytune.models import load_model, load_tokenizer

    _import_lm_eval()  # fail before loading any model
    rows = []
    for name in names:
        if progress:
            print(f"  lm-eval {','.join(tasks)} on {name}", file=sys.stderr, flush=True)
        model = load_model(name, dtype=dtype, device=device)
        rows.append({"model": name, **run_tasks(model, load_tokenizer(name), tasks, **kwargs)})
        del model
    return {"tasks": tasks, "models": rows}


def markdown(result: dict) -> str:
    lines = ["| model | task | metric | value | stderr |", "|---|---|---|---:|---:|"]
    for row in result["models"]:
        for task, metrics in row["results"].items():
            for key, value in metrics.items():
                if "_stderr" in key or key == "samples":
                    continue
                stderr = metrics.get(key.replace(",", "_stderr,", 1))
                stderr_text = f"{stderr:.4f}" if isinstance(stderr, (int, float)) else ""
                lines.append(f"| {row['model']} | {task} | {key} | {value:.4f} | {stderr_text} |")
    return "\n".join(lines) + "\n"
