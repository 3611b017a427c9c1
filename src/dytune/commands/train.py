"""`dytune train [CONFIG.yaml] [--key value ...]`: post-train a model (LayerNorm baseline or DyT).

    dytune train configs/smollm2_cpu_lora_dyt.yaml
    dytune train configs/smollm2_cpu_lora_dyt.yaml --max_steps 50 --data.max_samples 200 --output_dir runs/try
    dytune train --model smollm2-135m --data ../shared/data/alpaca_sample.json --mode lora+dyt --distill
    dytune train configs/smollm2_cpu_lora_dyt.yaml --resume          # continue from the latest checkpoint
    dytune train configs/study/distilgpt2-lora-alpaca.yaml --dry-run  # print the resolved config, load nothing
    torchrun --nproc_per_node=2 -m dytune.cli train CONFIG.yaml      # DDP (gloo on CPU, NCCL on GPUs)

Every key of the config file is also a flag (`--key value`, flags override the file); `--data.KEY VALUE` sets
one data setting. Keys: dytune's own (model, data, norm, mode, distill, resume, DyT and LoRA options...) plus
every transformers.TrainingArguments field. `dytune train --help-keys` lists them.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers, name: str) -> None:  # noqa: ANN001
    p = subparsers.add_parser(name, help="post-train a model: full, lora, lora+dyt or dyt-only, with distillation",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=None, help="YAML config file (optional)")
    p.add_argument("--help-keys", action="store_true", help="list every config key with its help and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="print the fully resolved config (every setting, the data settings included) as JSON and exit "
                        "without loading a model or data")
    p.set_defaults(func=run, extra=[])

    # The config keys are HfArgumentParser's to parse (with the YAML file's values as defaults), so this parser
    # only splits off the file and hands every other argument through untouched.
    def parse_known_args(args=None, namespace=None):  # noqa: ANN001, ANN202
        args = list(args or [])
        if any(a in ("-h", "--help") for a in args):
            p.print_help()
            p.exit()
        namespace = namespace or argparse.Namespace()
        namespace.help_keys = "--help-keys" in args
        namespace.dry_run = "--dry-run" in args
        args = [a for a in args if a not in ("--help-keys", "--dry-run")]
        namespace.config = args.pop(0) if args and not args[0].startswith("-") else None
        namespace.extra = args
        namespace.func = run
        return namespace, []

    p.parse_known_args = parse_known_args


def resolve_dry_run(config: str | None, argv: list[str]) -> tuple[dict, list[str]]:
    """(every resolved setting, notes) without loading anything. On a machine without CUDA a config that asks
    for fp16 (CUDA-only) is resolved with fp16 off and reported with fp16 on, plus a note saying so."""
    import torch

    from dytune.data import DataSpec
    from dytune.errors import DytuneError
    from dytune.train.config import parse_config

    notes: list[str] = []
    try:
        cfg = parse_config(config, argv)
    except DytuneError:
        if torch.cuda.is_available():
            raise
        cfg = parse_config(config, argv, fp16=False)  # still failing: the error is not about the device
        notes.append("resolved on a machine without CUDA: this config trains in fp16, which needs a CUDA GPU")
        cfg.fp16 = True
    if cfg.bf16_note:
        notes.append(cfg.bf16_note)
    resolved = cfg.resolved()
    resolved["data"] = DataSpec.from_dict({"seed": cfg.seed, **cfg.data}).to_dict()  # every data default too
    return resolved, notes


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from dytune.train.config import parse_config

    if args.help_keys:
        from transformers import HfArgumentParser

        from dytune.train.config import TrainConfig

        HfArgumentParser(TrainConfig).print_help()
        return 0
    if args.dry_run:
        resolved, notes = resolve_dry_run(args.config, list(args.extra))
        for note in notes:
            print(f"dytune train: note: {note}", file=sys.stderr)
        print(json.dumps(resolved, indent=2, default=str))
        return 0
    cfg = parse_config(args.config, list(args.extra))
    from dytune.train import train

    summary = train(cfg)
    if cfg.process_index == 0:
        keys = ("status", "global_step", "train_tokens", "train_loss", "tokens_per_second", "final_eval", "final",
                "adapter")
        print(json.dumps({k: summary.get(k) for k in keys}, indent=2, default=str))
    return 0
