"""`dytune eval MODEL... --data DATA | --tasks T1,T2`: validation loss / perplexity, and lm-eval benchmarks."""

from __future__ import annotations

import argparse


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(
        name, help="validation loss and perplexity (training's data pipeline) and lm-eval benchmarks",
        description="With --data: loss and perplexity on assistant tokens and on all tokens, with token counts, "
                    "for every model, through the data pipeline training uses (same split, template, "
                    "truncation, label mask). With --tasks: lm-evaluation-harness tasks on the loaded models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("models", nargs="+", help="model names (smollm2-135m, directories, .gguf files, Hub ids)")
    g = p.add_argument_group("loss and perplexity (same options as the training config's data section)")
    g.add_argument("--data", default=None, help="data source: file, folder, glob or Hub dataset id")
    g.add_argument("--format", default=None, help="data format (default: detected)")
    g.add_argument("--split", default="val", choices=["val", "all"],
                   help="val: the validation split training holds out; all: every conversation of --data")
    g.add_argument("--val-fraction", type=float, default=0.05, help="as in training (with --split val)")
    g.add_argument("--val-source", default=None, help="a separate validation source, as in training")
    g.add_argument("--max-samples", type=int, default=None, help="as in training: sample this many first")
    g.add_argument("--max-length", type=int, default=1024, help="tokens per example (truncated)")
    g.add_argument("--chat-template", default=None, help="a Jinja template file or 'default', as in training")
    g.add_argument("--clean", action="store_true", help="clean ShareGPT noise, as in training")
    g.add_argument("--seed", type=int, default=0, help="split / sampling seed, as in training")
    h = p.add_argument_group("lm-evaluation-harness")
    h.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks, e.g. hellaswag,arc_easy")
    h.add_argument("--num-fewshot", type=int, default=None)
    h.add_argument("--limit", type=float, default=None, help="examples per task (or a fraction < 1)")
    h.add_argument("--include-path", default=None, help="a folder of your own lm-eval task YAML files")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: where the model loads)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights and activations (DyT parameters stay float32); bfloat16 is ~2x faster on CPUs with "
                        "AVX512-BF16/AMX but changes the numbers: compare models in the same dtype")
    p.add_argument("--out", default=None, help="write JSON here (and Markdown next to it)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; on a machine shared with other jobs, 1 can be "
                        "many times faster than oversubscribed cores)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    import torch

    from dytune.errors import DytuneError

    if not args.data and not args.tasks:
        raise DytuneError("nothing to evaluate: pass --data DATA (loss and perplexity) and/or --tasks T1,T2 "
                          "(lm-evaluation-harness)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    result, text = {}, []
    if args.data:
        from dytune.data import DataSpec
        from dytune.eval.perplexity import evaluate_models, markdown

        spec = DataSpec(source=args.data, format=args.format, max_samples=args.max_samples,
                        val_fraction=args.val_fraction, val_source=args.val_source, max_length=args.max_length,
                        chat_template=args.chat_template, clean=args.clean, seed=args.seed)
        result["loss"] = evaluate_models(args.models, spec, split=args.split, batch_size=args.batch_size,
                                         device=args.device, dtype=dtype)
        text.append(markdown(result["loss"]))
    if args.tasks:
        from dytune.eval.harness import evaluate_tasks, markdown as tasks_markdown

        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        result["tasks"] = evaluate_tasks(args.models, tasks, device=args.device, dtype=dtype,
                                         num_fewshot=args.num_fewshot, limit=args.limit,
                                         batch_size=args.batch_size, include_path=args.include_path,
                                         seed=args.seed)
        text.append(tasks_markdown(result["tasks"]))
    print("\n".join(text))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text("\n".join(text))
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
