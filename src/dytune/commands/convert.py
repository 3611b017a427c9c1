"""`dytune convert SRC OUT`: convert a model's norms to DyT and save it, printing the per-layer report."""

from __future__ import annotations

import argparse


def add_parser(subparsers, name: str) -> None:  # noqa: ANN001
    from dytune.refit import REFITS, RIDGE_TARGETS

    p = subparsers.add_parser(
        name, help="replace a model's LayerNorm/RMSNorm layers with DyT and save it",
        description="Convert SRC (Hub id, model directory, .gguf file, or the embedded default 'smollm2-135m') "
                    "to Dynamic Tanh and save it to OUT as a Hugging Face directory (safetensors).",
    )
    p.add_argument("src", help="model to convert: Hub id, directory, .gguf file, or 'smollm2-135m'")
    p.add_argument("out", help="output directory")
    p.add_argument("--alpha-init", default="calibrated",
                   help="calibrated (default: fit alpha to each norm on calibration text), paper, constant:VALUE")
    p.add_argument("--calibration", metavar="DATA",
                   help="calibration data: a .txt file (paragraphs), or any source `dytune data` reads "
                        "(Alpaca/ShareGPT/messages JSON or JSONL...); default: a small built-in text")
    p.add_argument("--calibration-samples", type=int, default=64, help="records taken from DATA (default 64)")
    p.add_argument("--calibration-max-tokens", type=int, default=16384,
                   help="calibration tokens used in the fits (default 16384; more helps --refit linear)")
    p.add_argument("--calibration-method", default="sequential", choices=["sequential", "parallel"])
    p.add_argument("--refit", default="affine", choices=REFITS,
                   help="with calibrated alpha, what else is fitted by least squares: affine (default: each DyT's "
                        "gamma/beta), none (gamma/beta copied exactly), linear (also the linear layers around each "
                        "norm and the LM head, untying a tied head; changes their weights)")
    p.add_argument("--sink-weight", type=float, default=1.0,
                   help="weight of each sequence's first token (the attention sink) in the least-squares fits "
                        "(default 1; 30 helps --refit linear)")
    p.add_argument("--refit-ridge", type=float, default=1e-3,
                   help="ridge strength of --refit linear's least-squares solves, relative to the mean diagonal of "
                        "each solve's Gram matrix (default 1e-3; larger: a looser fit, see the README)")
    p.add_argument("--refit-ridge-to", choices=RIDGE_TARGETS, default="zero",
                   help="what that ridge pulls towards: zero, or what each layer computed before the refit (the "
                        "DyT's affine fit, the original output projections)")
    p.add_argument("--norms", default=None,
                   help="kinds to convert, comma-separated from attn,ffn,post,final,embed,qk,inner or 'all' "
                        "(default: all but qk)")
    p.add_argument("--per-channel", action="store_true", help="one alpha per channel instead of a scalar")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code from the Hub")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from dytune.convert import convert, parse_kinds
    from dytune.errors import DytuneError
    from dytune.models import load_model, load_tokenizer
    from dytune.saving import save

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise DytuneError(f"{out} already exists: choose another output directory or pass --overwrite")
    parse_kinds(args.norms)  # validate before the (slow) load
    model = load_model(args.src, trust_remote_code=args.trust_remote_code)
    tokenizer = load_tokenizer(args.src, trust_remote_code=args.trust_remote_code)
    calibration = None
    if args.calibration:
        from dytune.calibration_data import calibration_texts_from_source

        calibration = calibration_texts_from_source(args.calibration, tokenizer, args.calibration_samples)
    report = convert(model, alpha_init=args.alpha_init, norms=args.norms, per_channel=args.per_channel,
                     tokenizer=tokenizer, calibration=calibration, calibration_method=args.calibration_method,
                     calibration_refit=args.refit, sink_weight=args.sink_weight,
                     refit_ridge=args.refit_ridge, refit_ridge_to=args.refit_ridge_to,
                     calibration_max_tokens=args.calibration_max_tokens)
    model.config.dyt["source"] = args.src
    save(model, out, tokenizer, overwrite=args.overwrite,
         extra_files={"conversion_report.json": report.to_dict()})
    print(report.table())
    print(f"saved DyT model to {out} (load with dytune.load({str(out)!r}) or, after `import dytune`, "
          "AutoModelForCausalLM.from_pretrained)")
    return 0
