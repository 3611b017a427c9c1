"""`dytune convert SRC OUT`: convert a model's norms to DyT and save it, printing the per-layer report.

The conversion flags are `ConvertConfig`'s fields (the same keys as in `dytune train` and `dytune.convert`)."""

from __future__ import annotations

import argparse


def add_parser(subparsers, name: str) -> None:  # noqa: ANN001
    from dytune.conversion.config import add_arguments

    p = subparsers.add_parser(
        name, help="replace a model's LayerNorm/RMSNorm layers with DyT and save it",
        description="Convert SRC (Hub id, model directory, .gguf file, or the embedded default 'smollm2-135m') "
                    "to Dynamic Tanh and save it to OUT as a Hugging Face directory (safetensors).",
    )
    p.add_argument("src", help="model to convert: Hub id, directory, .gguf file, or 'smollm2-135m'")
    p.add_argument("out", help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the Hub")
    p.add_argument("--portable", action="store_true",
                   help="also write the DyT modeling code so OUT loads with trust_remote_code=True where dytune "
                        "is not installed")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dytune.conversion import ConvertConfig, convert
    from dytune.errors import DytuneError
    from dytune.models import load_model, load_tokenizer
    from dytune.saving import save

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise DytuneError(f"{out} already exists: choose another output directory or pass --overwrite")
    config = ConvertConfig.from_object(args)  # validated before the (slow) load
    model = load_model(args.src, trust_remote_code=args.trust_remote_code)
    tokenizer = load_tokenizer(args.src, trust_remote_code=args.trust_remote_code)
    report = convert(model, config, tokenizer=tokenizer, source=args.src).report
    save(model, out, tokenizer, overwrite=args.overwrite, portable=args.portable,
         extra_files={"conversion_report.json": report.to_dict()})
    print(report.table())
    print(f"saved DyT model to {out} (load with dytune.load({str(out)!r}) or, after `import dytune`, "
          "AutoModelForCausalLM.from_pretrained)")
    return 0
