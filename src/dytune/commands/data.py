"""`dytune data`: load, check and (with --tokenizer) tokenize a data set before training.

    dytune data ../shared/data/sharegpt_sample.json
    dytune data ShareGPT_V3_unfiltered_cleaned_split.json --clean --tokenizer smollm2-135m --max-length 2048
    dytune data alpaca.json:2 sharegpt.json --max-samples 20000 --out runs/data --save
    dytune data my.jsonl --format alpaca --field-map instruction=question,output=answer
    dytune data sharegpt.json --turns first --tokenizer distilgpt2 --chat-template concat --train-on all --mask-eos \
        --max-length 512 --show 2                     # the original study's ShareGPT examples, trained tokens shown

Prints the summary (records read, kept, dropped by reason, turn fixes, turns, tokens, trainable tokens) and
writes data_report.json into --out (default: the current directory).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dytune.errors import DytuneError


def _pairs(text: str, what: str) -> dict[str, str | None]:
    """'a=b,c=d' -> {'a': 'b', 'c': 'd'}; an empty value means None (e.g. --role-map tool= removes tool turns)."""
    out: dict[str, str | None] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in item:
            raise DytuneError(f"{what} entry {item!r} is not key=value (e.g. {what} human=user,bot=assistant)")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip() or None
    return out


def add_parser(subparsers, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="load, check and tokenize a data set; print and save a data report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="+", help="file, folder, glob or Hub dataset id; PATH:WEIGHT to weight a source")
    p.add_argument("--format", default=None,
                   help="alpaca, sharegpt, messages (openai/rewild), prompt_completion or text (default: detect)")
    p.add_argument("--tokenizer", default=None, metavar="MODEL",
                   help="tokenize with this model's tokenizer (smollm2-135m, a directory, a .gguf or a Hub id)")
    p.add_argument("--max-length", type=int, default=1024, help="tokens per example (default 1024)")
    p.add_argument("--out", default=".", help="folder for data_report.json (and --save output); default: .")
    p.add_argument("--max-samples", type=int, default=None, help="seeded random subset of this many conversations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clean", action="store_true", help="clean ShareGPT noise (HTML, 'Copy code', regenerate)")
    p.add_argument("--train-on", choices=("assistant", "all"), default="assistant")
    p.add_argument("--mask-eos", action="store_true",
                   help="take every EOS token out of the loss (as a collator padding with EOS does: the study's)")
    p.add_argument("--turns", choices=("all", "first"), default="all",
                   help="first: only the first user and the first assistant turn (the study's ShareGPT rows)")
    p.add_argument("--chat-template", default=None,
                   help="Jinja template file or string overriding the tokenizer's, or a named one: default, concat "
                        "(the study's prompt + blank line + answer), prompt-completion (TRL's, no separator)")
    p.add_argument("--packing", action="store_true", help="pack examples into max-length sequences")
    p.add_argument("--split", default="train", help="split of a Hub dataset (default train)")
    p.add_argument("--revision", default=None, help="Hub dataset revision (branch, tag or commit)")
    p.add_argument("--data-files", default=None, help="data_files pattern for a Hub dataset")
    p.add_argument("--streaming", action="store_true", help="stream a Hub dataset (stops after --max-samples)")
    p.add_argument("--field-map", default=None, metavar="K=V,...",
                   help="field names, e.g. instruction=question,output=answer or messages=dialog,role=speaker")
    p.add_argument("--role-map", default=None, metavar="K=V,...",
                   help="speaker -> role, e.g. bot=assistant,tool= (empty: remove those turns)")
    p.add_argument("--num-proc", type=int, default=1, help="processes for tokenization")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the tokenized-data cache")
    p.add_argument("--save", action="store_true",
                   help="also write conversations.jsonl (and tokenized/ with --tokenizer) into --out")
    p.add_argument("--show", type=int, default=0, metavar="N",
                   help="print N examples (with --tokenizer: trained tokens between « »)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from dytune.data import load_conversations, tokenize_conversations

    convs, report = load_conversations(
        args.source, args.format, max_samples=args.max_samples, seed=args.seed,
        field_map=_pairs(args.field_map, "--field-map") if args.field_map else None,
        role_map=_pairs(args.role_map, "--role-map") if args.role_map else None, clean=args.clean,
        split=args.split, revision=args.revision, streaming=args.streaming, data_files=args.data_files,
        turns=args.turns)
    tokens = tokenizer = None
    if args.tokenizer:
        from dytune.models import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
        tokens = tokenize_conversations(convs, tokenizer, max_length=args.max_length, train_on=args.train_on,
                                        chat_template=args.chat_template, packing=args.packing,
                                        num_proc=args.num_proc, cache_dir=False if args.no_cache else None,
                                        report=report, mask_eos=args.mask_eos)
    out = Path(args.out)
    print(report.table())
    path = report.save(out)
    print(f"report: {path}")
    if args.save:
        conv_path = out / "conversations.jsonl"
        convs.to_json(str(conv_path), lines=True, force_ascii=False)
        print(f"conversations: {conv_path}")
        if tokens is not None:
            tokens.save_to_disk(str(out / "tokenized"))
            print(f"tokenized: {out / 'tokenized'}")
    for i in range(min(args.show, len(convs))):
        print(f"\n--- example {i}: {convs[i]['id']}")
        if tokens is not None and not args.packing and i < len(tokens):
            print(render_labels(tokenizer, tokens[i]["input_ids"], tokens[i]["labels"]))
        else:
            print(json.dumps(convs[i]["messages"], ensure_ascii=False, indent=1))
    return 0


def render_labels(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    """Decoded example with the trained stretches between « and »."""
    parts, run, trained = [], [], None
    for token, label in zip(input_ids, labels):
        now = label != -100
        if trained is not None and now != trained:
            text = tokenizer.decode(run)
            parts.append(f"«{text}»" if trained else text)
            run = []
        run.append(token)
        trained = now
    if run:
        text = tokenizer.decode(run)
        parts.append(f"«{text}»" if trained else text)
    return "".join(parts)
