"""Inference speed: prefill and decode tokens/s of whole models, and one norm layer against one DyT layer.

Model benchmark (`bench_models`): for each (batch size, prompt length), a prefill forward pass over random
prompt tokens, then `new_tokens` greedy decode steps on the KV cache. Warm-up rounds first, then `repeats`
rounds; every round runs every model, in a rotating order, so a slow patch of a noisy machine hits all of
them alike and the *ratio* holds even where absolute numbers drift. Medians with min / max / IQR.

Generation paths (`BenchSettings.generation`): `eager` runs the model's forward step by step on the dynamic KV
cache (the default: on this CPU it was the faster one, docs/speed.md); `static` runs transformers' `generate`
with a static cache and its decode step `torch.compile`d (fixed shapes, one graph), timing prefill and decode
apart with a per-step clock. Both decode greedily for exactly `new_tokens` steps.

`study_timing`: the original DyT study's measurement instead, one batched greedy `generate` over the 80
MT-bench questions, both turns as one prompt, left padding, float32, `time.time()` around the call.

Memory: on CUDA the peak allocated per measurement; on CPU the weights and KV-cache bytes (torch keeps no
CPU allocator statistics) and the process's peak RSS.

Norm microbenchmark (`bench_norm_layers`): the model's own norm module against `DyT` at the model's hidden
size, eager and `torch.compile`d, forward and forward+backward, timed with `torch.utils.benchmark`.
`fused=True` adds Liger-Kernel's Triton `LigerDyT` (CUDA only; unverified here, no GPU was available).
"""

from __future__ import annotations

import copy
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from dytune.dyt import DyT
from dytune.errors import DytuneError


@dataclass
class BenchSettings:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4])
    prompt_lengths: list[int] = field(default_factory=lambda: [128, 512])
    new_tokens: int = 32
    warmup: int = 1
    repeats: int = 5
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    generation: str = "eager"  # eager | static (see the module docstring)


GENERATION_PATHS = ("eager", "static")


def machine_info(device: str) -> dict:
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    else:
        from dytune.train.precision import bf16_is_fast

        info["processor"] = cpu_name()
        info["bf16_is_fast"] = list(bf16_is_fast("cpu"))  # (fast?, why): whether bf16 numbers mean AMX here
    return info


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() says only 'x86_64' there), else platform's."""
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.is_file() else []
    return names[0] if names else platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stats(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "iqr": q[2] - q[0],
            "n": len(values)}


def _cache_bytes(past) -> int:
    total = 0
    seen = set()
    stack = [past]
    while stack:  # walk whatever cache structure this transformers version returns
        obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            if id(obj) not in seen:
                seen.add(id(obj))
                total += obj.numel() * obj.element_size()
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif hasattr(obj, "layers"):
            stack.extend(obj.layers)
        elif hasattr(obj, "keys") and hasattr(obj, "values") and not callable(obj.keys):
            stack.extend([obj.keys, obj.values])
        elif hasattr(obj, "key_cache"):
            stack.extend([obj.key_cache, obj.value_cache])
    return total


def _cache_of(out):
    cache = getattr(out, "cache", None)  # transformers >= 5.2x; `past_key_values` before
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _cache_kwarg(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class _StepClock:
    """A logits processor that only notes when each decoding step's logits arrive (the first: after prefill)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        _sync(scores.device)
        self.times.append(time.perf_counter())
        return scores


@torch.no_grad()
def _static_run(model, input_ids: torch.Tensor, new_tokens: int) -> dict:
    """Prefill, then `new_tokens` greedy steps, through `generate` with a static cache and a compiled step."""
    from transformers import CompileConfig, GenerationConfig, LogitsProcessorList

    compile_config = CompileConfig(fullgraph=False, dynamic=False, mode="default")
    compile_config._compile_all_devices = True  # transformers compiles on CUDA only unless told (its own flag)
    config = GenerationConfig(max_new_tokens=new_tokens + 1, min_new_tokens=new_tokens + 1, do_sample=False,
                              cache_implementation="static", compile_config=compile_config,
                              return_dict_in_generate=True, pad_token_id=getattr(model.config, "pad_token_id", None) or 0)
    clock = _StepClock()
    device = input_ids.device
    _sync(device)
    t0 = time.perf_counter()
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config,
                         logits_processor=LogitsProcessorList([clock]))
    _sync(device)
    t2 = time.perf_counter()
    past = _cache_of(out)
    return {"prefill_s": clock.times[0] - t0, "decode_s": t2 - clock.times[0],
            "kv_cache_bytes": _cache_bytes(past) if past is not None else 0}


@torch.no_grad()
def _one_run(model, input_ids: torch.Tensor, new_tokens: int) -> dict:
    """Prefill the prompt, then `new_tokens` greedy decode steps; seconds of each phase."""
    device = input_ids.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=input_ids, use_cache=True)
    _sync(device)
    t1 = time.perf_counter()
    past = _cache_of(out)
    token = out.logits[:, -1:].argmax(-1)  # (B, 1)
    cache_kw = _cache_kwarg(model)
    for _ in range(new_tokens):
        out = model(input_ids=token, use_cache=True, **{cache_kw: past})
        past = _cache_of(out)
        token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    t2 = time.perf_counter()
    result = {"prefill_s": t1 - t0, "decode_s": t2 - t1, "kv_cache_bytes": _cache_bytes(past)}
    if device.type == "cuda":
        result["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
    return result


def model_facts(model: nn.Module) -> dict:
    norms: dict[str, int] = {}
    for module in model.modules():
        name = type(module).__name__
        if isinstance(module, DyT) or name.endswith(("Norm", "RMSNorm", "LayerNorm")):
            norms[name] = norms.get(name, 0) + 1
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters()) +
            sum(b.numel() * b.element_size() for b in model.buffers()),
            "norm_modules": norms, "hidden_size": hidden_size_of(model)}


def hidden_size_of(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or getattr(cfg, "d_model"))


def bench_models(models: dict[str, nn.Module], settings: BenchSettings | None = None,
                 progress: bool = True) -> dict:
    """Interleaved prefill/decode throughput of several models (same vocabulary assumed for the prompts)."""
    settings = settings or BenchSettings()
    if not models:
        raise DytuneError("no model to benchmark")
    if settings.generation not in GENERATION_PATHS:
        raise DytuneError(f"--generation {settings.generation!r}: choose one of {', '.join(GENERATION_PATHS)}")
    device = torch.device(settings.device)
    labels = list(models)
    vocab = min(m.config.vocab_size for m in models.values())
    limit = min(getattr(m.config, "max_position_embeddings", None) or getattr(m.config, "n_positions", None) or
                10**9 for m in models.values())
    for length in settings.prompt_lengths:
        if length + settings.new_tokens > limit:
            raise DytuneError(f"prompt length {length} + {settings.new_tokens} new tokens exceeds the models' "
                              f"context of {limit}; lower --prompt-lengths or --new-tokens")
    gen = torch.Generator().manual_seed(settings.seed)
    cases = [(b, n, torch.randint(10, vocab, (b, n), generator=gen).to(device))
             for b in settings.batch_sizes for n in settings.prompt_lengths]
    samples: dict = {(label, b, n): [] for label in labels for b, n, _ in cases}
    run_once = _static_run if settings.generation == "static" else _one_run
    rounds = settings.warmup + settings.repeats
    for r in range(rounds):
        order = labels[r % len(labels):] + labels[:r % len(labels)]  # rotate who goes first
        for b, n, ids in cases:
            for label in order:
                run = run_once(models[label], ids, settings.new_tokens)
                if r >= settings.warmup:
                    samples[(label, b, n)].append(run)
        if progress:
            print(f"  bench round {r + 1}/{rounds}{' (warm-up)' if r < settings.warmup else ''}", file=sys.stderr,
                  flush=True)

    results = []
    for b, n, _ in cases:
        for label in labels:
            runs = samples[(label, b, n)]
            row = {"model": label, "batch": b, "prompt": n, "new_tokens": settings.new_tokens,
                   "prefill_tok_s": _stats([b * n / x["prefill_s"] for x in runs]),
                   "decode_tok_s": _stats([b * settings.new_tokens / x["decode_s"] for x in runs]),
                   "prefill_s": _stats([x["prefill_s"] for x in runs]),
                   "decode_s": _stats([x["decode_s"] for x in runs]),
                   "kv_cache_bytes": runs[-1]["kv_cache_bytes"]}
            if "peak_mem_bytes" in runs[-1]:
                row["peak_mem_bytes"] = max(x["peak_mem_bytes"] for x in runs)
            results.append(row)
    total = {label: sum(x["prefill_s"] + x["decode_s"] for k, v in samples.items() if k[0] == label for x in v)
             for label in labels}
    out = {"machine": machine_info(settings.device), "settings": asdict(settings),
           "models": {label: model_facts(m) for label, m in models.items()},
           "results": results, "total_timed_seconds": total,
           "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if len(labels) >= 2:
        out["ratios"] = ratios(results, labels[0], labels[1:], total)
    return out


def ratios(results: list[dict], base: str, others: list[str], total: dict) -> list[dict]:
    """Throughput of each other model relative to `base` (> 1: faster), per case, from medians."""
    by_key = {(r["model"], r["batch"], r["prompt"]): r for r in results}
    rows = []
    for other in others:
        for (model, b, n), r in by_key.items():
            if model != base:
                continue
            o = by_key[(other, b, n)]
            rows.append({"model": other, "vs": base, "batch": b, "prompt": n,
                         "prefill": o["prefill_tok_s"]["median"] / r["prefill_tok_s"]["median"],
                         "decode": o["decode_tok_s"]["median"] / r["decode_tok_s"]["median"]})
        rows.append({"model": other, "vs": base, "batch": "all", "prompt": "all",
                     "total_time": total[other] / total[base]})
    return rows


# --- one norm layer against one DyT layer ---------------------------------------------------------------

def norm_module_of(model: nn.Module) -> nn.Module:
    """A copy of the model's first normalization module (its own class, e.g. LlamaRMSNorm)."""
    for module in model.modules():
        name = type(module).__name__
        if isinstance(module, (nn.LayerNorm,)) or (name.endswith(("RMSNorm", "LayerNorm")) and not isinstance(module, DyT)):
            return copy.deepcopy(module)
    raise DytuneError(f"{type(model).__name__} has no LayerNorm/RMSNorm module to benchmark")


def liger_dyt(hidden: int, device: str) -> nn.Module:
    """Liger-Kernel's fused Triton DyT. CUDA only; raises a DytuneError that says what is missing."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise DytuneError("--fused benchmarks Liger-Kernel's Triton DyT kernel, which needs a CUDA GPU "
                          "(pass --device cuda on a machine with one)")
    try:
        from liger_kernel.transformers import LigerDyT
    except ImportError as err:
        raise DytuneError(f"--fused needs Liger-Kernel's LigerDyT ({err}): `pip install --no-deps liger-kernel` "
                          "(it needs triton, which CUDA builds of torch include)") from None
    return LigerDyT(hidden, beta=True)


def bench_norm_layers(norm: nn.Module, hidden: int, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                      shape: tuple[int, int] = (4, 512), compile: bool = True, fused: bool = False,
                      min_run_time: float = 0.5, backward: bool = True, rounds: int = 3) -> list[dict]:
    """Microseconds per call of `norm` vs `DyT(hidden)` on a (B, T, hidden) input.

    Every variant is built (and compiled) first; then `rounds` rounds time each variant in turn with
    `torch.utils.benchmark` (`blocked_autorange`), so a busy spell of the machine hits all variants. The
    result is the median of the rounds' medians, with their min and max.
    """
    from torch.utils import benchmark

    modules = {type(norm).__name__: norm, "DyT": DyT(hidden, alpha_init=0.5, bias=True)}
    if fused:
        modules["LigerDyT (fused)"] = liger_dyt(hidden, device)
    x0 = torch.randn(*shape, hidden, device=device, dtype=dtype)
    steps, rows = [], []
    for name, module in modules.items():
        module = module.to(device)
        if name != "DyT":  # DyT keeps float32 parameters by design and computes in float32
            module = module.to(dtype)
        variants = [("eager", module)]
        if compile and "fused" not in name:
            variants.append(("compile", torch.compile(module)))
        for mode, fn in variants:
            for pass_name, grad in [("forward", False)] + ([("forward+backward", True)] if backward else []):
                x = x0.clone().requires_grad_(grad)

                def step(fn=fn, x=x, grad=grad):
                    if grad:
                        fn(x).sum().backward()
                    else:
                        with torch.no_grad():
                            fn(x)
                row = {"module": name, "mode": mode, "pass": pass_name, "hidden": hidden, "shape": [*shape, hidden],
                       "dtype": str(dtype).replace("torch.", "")}
                try:
                    for _ in range(3):  # warm-up, and compilation for the compiled variant
                        step()
                    _sync(torch.device(device))
                    steps.append((row, step, []))
                except Exception as err:  # noqa: BLE001 - e.g. no C++ compiler for inductor: report, go on
                    row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                rows.append(row)
    for _ in range(rounds):
        for row, step, medians in steps:
            timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
            medians.append(timer.blocked_autorange(min_run_time=min_run_time).median * 1e6)
    for row, _, medians in steps:
        row.update(median_us=statistics.median(medians), min_us=min(medians), max_us=max(medians),
                   rounds=len(medians))
    return rows


def markdown(result: dict) -> str:
    lines = []
    m = result["machine"]
    where = m.get("gpu") or f"CPU ({m['torch_threads']} threads, {m['cpu_count']} cores)"
    s = result["settings"]
    lines.append(f"Device: {where}; torch {m['torch']}; {s['dtype']}; {s['warmup']} warm-up + {s['repeats']} "
                 f"interleaved rounds; decode = {s['new_tokens']} greedy steps on the KV cache "
                 f"({s.get('generation', 'eager')} path).\n")
    lines.append("| model | batch | prompt | prefill tok/s (median [min, max]) | decode tok/s (median [min, max]) |")
    lines.append("|---|---:|---:|---:|---:|")
    for r in result["results"]:
        p, d = r["prefill_tok_s"], r["decode_tok_s"]
        lines.append(f"| {r['model']} | {r['batch']} | {r['prompt']} | {p['median']:.0f} [{p['min']:.0f}, "
                     f"{p['max']:.0f}] | {d['median']:.1f} [{d['min']:.1f}, {d['max']:.1f}] |")
    if result.get("ratios"):
        lines.append("\n| model / baseline | batch | prompt | prefill ratio | decode ratio |")
        lines.append("|---|---:|---:|---:|---:|")
        for r in result["ratios"]:
            if "total_time" in r:
                continue
            lines.append(f"| {r['model']} / {r['vs']} | {r['batch']} | {r['prompt']} | {r['prefill']:.3f} | "
                         f"{r['decode']:.3f} |")
        for r in result["ratios"]:
            if "total_time" in r:
                t = result["total_timed_seconds"]
                lines.append(f"\nTotal timed seconds: {r['model']} {t[r['model']]:.2f} s vs {r['vs']} "
                             f"{t[r['vs']]:.2f} s (ratio {r['total_time']:.3f}; > 1 means slower).")
    if result.get("norm_layers"):
        lines.append("\n| layer | mode | pass | shape | median us [min, max over rounds] |")
        lines.append("|---|---|---|---|---:|")
        for r in result["norm_layers"]:
            if "error" in r:
                lines.append(f"| {r['module']} | {r['mode']} | {r['pass']} | | failed: {r['error']} |")
            else:
                lines.append(f"| {r['module']} | {r['mode']} | {r['pass']} | {'x'.join(map(str, r['shape']))} | "
                             f"{r['median_us']:.0f} [{r['min_us']:.0f}, {r['max_us']:.0f}] |")
    return "\n".join(lines) + "\n"


def study_timing(models: dict[str, nn.Module], tokenizer, questions: list[dict], *, max_new_tokens: int = 1024,
                 progress: bool = True) -> dict:
    """The original study's timing: per model, one batched greedy `generate` over every question (both turns
    as one prompt, left padding), wall clock by `time.time()` around the call; models one after the other."""
    from dytune.eval.mtbench import generate_batch

    prompts = [q["turns"] for q in questions]
    rows = []
    for label, model in models.items():
        start = time.time()
        _, counts, _, capped = generate_batch(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                              temperature=0.0, concat_turns=True)
        seconds = time.time() - start
        rows.append({"model": label, "seconds": seconds, "prompts": len(prompts), "generated_tokens": sum(counts),
                     "tokens_per_s": sum(counts) / seconds if seconds > 0 else None, "capped": capped})
        if progress:
            print(f"  study timing {label}: {seconds:.2f} s, {sum(counts)} tokens", file=sys.stderr, flush=True)
    out = {"protocol": "study", "max_new_tokens": max_new_tokens, "results": rows,
           "machine": machine_info(str(next(next(iter(models.values())).parameters()).device))}
    if len(rows) >= 2:
        out["ratio_seconds"] = {r["model"]: r["seconds"] / rows[0]["seconds"] for r in rows[1:]}
    return out


def study_markdown(result: dict) -> str:
    lines = [f"Study timing: one batched greedy generate over {result['results'][0]['prompts']} MT-bench prompts "
             f"(both turns as one prompt, left padding), max_new_tokens {result['max_new_tokens']}, time.time().\n",
             "| model | seconds | generated tokens | tokens/s |", "|---|---:|---:|---:|"]
    for r in result["results"]:
        lines.append(f"| {r['model']} | {r['seconds']:.2f} | {r['generated_tokens']} | {r['tokens_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def _load_for_bench(names: list[str], settings: BenchSettings, norm_swap: bool, alpha_init: str) -> dict:
    """Models by name; with norm_swap, one model and its own DyT conversion."""
    from dytune.models import load_model

    dtype = getattr(torch, settings.dtype)
    models: dict[str, nn.Module] = {}
    for name in names:
        label = name if name not in models else f"{name}#{len(models)}"
        models[label] = load_model(name, dtype=dtype, device=settings.device)
    if norm_swap:
        if len(names) != 1:
            raise DytuneError("--norm-swap benchmarks one model against its own DyT conversion: give one model")
        import dytune

        twin = copy.deepcopy(models[names[0]])
        dytune.convert(twin, alpha_init=alpha_init)
        twin.to(settings.device)
        if not any(isinstance(m, DyT) for m in twin.modules()):
            raise DytuneError(f"--norm-swap: no norm of {names[0]} was converted to DyT")
        models[f"{names[0]}+DyT"] = twin
    return models


def run_study_timing(names: list[str], *, settings: BenchSettings, norm_swap: bool = False,
                     alpha_init: str = "constant:1.0", questions_path: str | None = None,
                     max_new_tokens: int = 1024) -> dict:
    from dytune.eval.answers import load_questions
    from dytune.models import load_tokenizer

    questions = load_questions(questions_path)
    models = _load_for_bench(names, settings, norm_swap, alpha_init)
    result = study_timing(models, load_tokenizer(names[0]), questions, max_new_tokens=max_new_tokens)
    result["settings"] = asdict(settings)
    result["model_names"] = names
    return result


def run_bench(names: list[str], *, settings: BenchSettings, norm_swap: bool = False,
              alpha_init: str = "constant:1.0", norm_micro: bool = True, compile: bool = True,
              fused: bool = False, micro_shape: tuple[int, int] = (4, 512), min_run_time: float = 0.5,
              micro_rounds: int = 3) -> dict:
    """Load models by name (norm_swap: one model and its own DyT conversion) and benchmark them."""
    if fused and not settings.device.startswith("cuda"):
        liger_dyt(1, settings.device)  # fail early with the clear message
    dtype = getattr(torch, settings.dtype)
    models = _load_for_bench(names, settings, norm_swap, alpha_init)
    result = bench_models(models, settings)
    if norm_micro:
        first = next(iter(models.values()))
        norm = None
        for model in models.values():  # the first model that still has a norm (a DyT model has none)
            try:
                norm = norm_module_of(model)
                break
            except DytuneError:
                continue
        norm = norm if norm is not None else nn.LayerNorm(hidden_size_of(first))
        result["norm_layers"] = bench_norm_layers(norm, hidden_size_of(first),
                                                  device=settings.device, dtype=dtype, shape=micro_shape,
                                                  compile=compile, fused=fused, min_run_time=min_run_time,
                                                  rounds=micro_rounds)
    result["model_names"] = names
    return result
