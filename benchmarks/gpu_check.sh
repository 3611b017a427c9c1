#!/usr/bin/env bash
# One prepared GPU check for DyT (issue 19), at most ~8 minutes on a single H200. UNVERIFIED until it has run on
# a GPU: it was written on a CPU-only machine. Run from the repository root:
#
#     bash benchmarks/gpu_check.sh                  # writes $OUT/gpu_check.json, or benchmarks/results/gpu_check.json
#
# It checks, each step on its own (a failing step is recorded in the JSON and the next one runs):
#   1. install     liger-kernel without dependencies (torch is never upgraded)
#   2. train_step  a CUDA bf16 (autocast) training step of a SmolLM2-shaped DyT model: loss finite, every alpha
#                  moves, DyT parameters stay float32; with dytune's reference and fused (Triton) DyT
#   3. liger       Liger's fused LigerDyT against dytune's DyT: values and dx/dalpha/dgamma/dbeta, fp32 and bf16
#   4. layer_speed one layer, RMSNorm (HF eager, Liger fused) against DyT (reference, torch.compile, dytune fused,
#                  Liger), forward and forward+backward, widths 576 and 4096
#   5. model_speed SmolLM2-shaped model against its DyT twin: prefill and a training step, eager and compiled, bf16
#   6. fsdp2       `dytune train` under configs/accelerate_fsdp2.yaml on every GPU there is (3 steps, full mode
#                  with the distillation teacher sharded too)
# Models are built from configs (random weights; speed and these checks do not depend on trained weights) and
# the tokenizer is dytune's tiny test tokenizer, so nothing is downloaded.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-benchmarks/results}"
mkdir -p "$OUT_DIR"
JSON="$OUT_DIR/gpu_check.json"
WORK="$(mktemp -d)"
export DYTUNE_GPU_CHECK_JSON="$JSON" DYTUNE_GPU_CHECK_WORK="$WORK" PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
NGPU="$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
echo "gpu_check: $NGPU GPU(s), results -> $JSON"

PIP_LOG="$WORK/pip.log"
timeout 90 python -m pip install --no-deps liger-kernel >"$PIP_LOG" 2>&1
PIP_RC=$?
export DYTUNE_GPU_CHECK_PIP_RC="$PIP_RC" DYTUNE_GPU_CHECK_PIP_LOG="$PIP_LOG"

cat >"$WORK/check.py" <<'PY'
import copy, json, os, statistics, sys, time, traceback
from pathlib import Path

import torch

JSON = Path(os.environ["DYTUNE_GPU_CHECK_JSON"])
WORK = Path(os.environ["DYTUNE_GPU_CHECK_WORK"])
RESULT = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
          "torch": torch.__version__, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count(),
          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
          "install": {"liger_kernel_pip_rc": int(os.environ.get("DYTUNE_GPU_CHECK_PIP_RC", -1)),
                      "pip_tail": Path(os.environ["DYTUNE_GPU_CHECK_PIP_LOG"]).read_text()[-600:]}}


def save():
    JSON.write_text(json.dumps(RESULT, indent=2) + "\n")


def step(name):
    def wrap(fn):
        t0 = time.time()
        try:
            RESULT[name] = fn()
        except Exception as err:  # noqa: BLE001 - record and go on to the next check
            RESULT[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
        RESULT[name] = {**RESULT[name], "seconds": round(time.time() - t0, 1)} if isinstance(RESULT[name], dict) else RESULT[name]
        print(f"gpu_check: {name} done in {time.time() - t0:.0f}s", flush=True)
        save()
        return fn
    return wrap


def smollm2_config(layers=30, vocab=49152, hidden=576):
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=1536 * hidden // 576,
                       num_hidden_layers=layers, num_attention_heads=9 * hidden // 576, num_key_value_heads=3,
                       max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=True,
                       rope_theta=100000.0)


def twins(layers=30, vocab=49152):
    import dytune
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(smollm2_config(layers, vocab), dtype=torch.float32)
    twin = copy.deepcopy(base)
    dytune.convert(twin, alpha_init="constant:0.5", progress=False)
    return base.cuda(), twin.cuda()


def cuda_time(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3)  # us
    return {"median_us": statistics.median(times), "min_us": min(times), "max_us": max(times)}


if not torch.cuda.is_available():
    RESULT["error"] = "no CUDA device visible to torch"
    save()
    sys.exit(1)
save()


@step("train_step")
def _():
    import dytune.dyt as D
    from dytune.dyt import DyT
    out = {}
    for kernel in ("reference", "fused"):
        D.set_kernel(kernel)
        _, model = twins(layers=4)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        before = {n: m.alpha.detach().clone() for n, m in model.named_modules() if isinstance(m, DyT)}
        ids = torch.randint(10, 49000, (4, 256), device="cuda")
        losses = []
        for _ in range(3):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step(); opt.zero_grad()
            losses.append(loss.item())
        moved = {n: (m.alpha.detach() - before[n]).abs().max().item() for n, m in model.named_modules() if isinstance(m, DyT)}
        dtypes = {str(p.dtype) for m in model.modules() if isinstance(m, DyT) for p in m.parameters()}
        out[kernel] = {"losses": losses, "finite": all(l == l and abs(l) < 1e4 for l in losses),
                       "alpha_moved_min": min(moved.values()), "every_alpha_moved": min(moved.values()) > 1e-6,
                       "dyt_param_dtypes": sorted(dtypes)}
    D.set_kernel("auto")
    out["ok"] = all(v["finite"] and v["every_alpha_moved"] and v["dyt_param_dtypes"] == ["torch.float32"]
                    for k, v in out.items() if isinstance(v, dict))
    return out


@step("liger")
def _():
    from liger_kernel.transformers import LigerDyT
    from dytune.dyt import DyT, dyt_fused
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        ours = DyT(4096, alpha_init=0.7, bias=True).cuda()
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5); ours.bias.uniform_(-0.3, 0.3)
        liger = LigerDyT(4096, beta=True, init_alpha=0.7).cuda()
        with torch.no_grad():
            liger.alpha.copy_(ours.alpha); liger.gamma.copy_(ours.weight); liger.beta.copy_(ours.bias)
        liger = liger.to(dtype) if dtype != torch.float32 else liger  # Liger keeps parameters in the input dtype
        x = (torch.randn(8, 1024, 4096, device="cuda") * 2).to(dtype)
        g = torch.randn_like(x)
        res = {}
        for name, fn, params in [("dytune", ours, [ours.alpha, ours.weight, ours.bias]),
                                 ("dytune fused", lambda t: dyt_fused(t, ours.alpha, ours.weight, ours.bias),
                                  [ours.alpha, ours.weight, ours.bias]),
                                 ("liger", liger, [liger.alpha, liger.gamma, liger.beta])]:
            for p in params:
                p.grad = None
            xi = x.clone().requires_grad_(True)
            y = fn(xi)
            y.backward(g)
            res[name] = [y.detach().float(), xi.grad.float()] + [p.grad.float().clone() for p in params]
        diffs = {}
        for other in ("dytune fused", "liger"):
            diffs[other] = {k: ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                            for k, a, b in zip(["y", "dx", "dalpha", "dgamma", "dbeta"], res[other], res["dytune"])}
        out[str(dtype)] = {"max_rel_diff_vs_dytune": diffs}
    return out


@step("layer_speed")
def _():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from dytune.dyt import DyT, dyt_fused, dyt_reference
    out = {}
    try:
        from liger_kernel.transformers import LigerDyT, LigerRMSNorm
    except ImportError:
        LigerDyT = LigerRMSNorm = None
    for hidden, tokens in ((576, 4 * 512), (4096, 8 * 4096)):
        for dtype in (torch.float32, torch.bfloat16):
            dyt = DyT(hidden, 0.5, bias=False).cuda()
            layers = {"RMSNorm (HF eager)": LlamaRMSNorm(hidden).cuda().to(dtype),
                      "RMSNorm compiled": torch.compile(LlamaRMSNorm(hidden).cuda().to(dtype)),
                      "DyT reference": lambda t, d=dyt: dyt_reference(t, d.alpha, d.weight, d.bias),
                      "DyT compiled (reference formula)": torch.compile(
                          lambda t, d=dyt: dyt_reference(t, d.alpha, d.weight, d.bias)),
                      "DyT dytune fused": lambda t, d=dyt: dyt_fused(t, d.alpha, d.weight, d.bias)}
            if LigerDyT is not None:
                layers["RMSNorm Liger fused"] = LigerRMSNorm(hidden).cuda().to(dtype)
                layers["DyT Liger fused"] = LigerDyT(hidden, beta=False).cuda().to(dtype)
            x = torch.randn(tokens, hidden, device="cuda", dtype=dtype)
            g = torch.randn_like(x)
            rows = {}
            for name, layer in layers.items():
                try:
                    with torch.no_grad():
                        fwd = cuda_time(lambda: layer(x))
                    xg = x.clone().requires_grad_(True)
                    def fb():
                        layer(xg).backward(g)
                        xg.grad = None
                    rows[name] = {"forward": fwd, "forward+backward": cuda_time(fb)}
                except Exception as err:  # noqa: BLE001
                    rows[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            out[f"{tokens}x{hidden} {dtype}"] = rows
    return out


@step("model_speed")
def _():
    import dytune.dyt as D
    base, twin = twins(layers=30)
    base, twin = base.to(torch.bfloat16), twin.to(torch.bfloat16)
    ids = torch.randint(10, 49000, (8, 1024), device="cuda")
    out = {}
    for mode in ("eager", "compiled"):
        for kernel in ("reference", "fused"):
            D.set_kernel(kernel)
            arms = {"RMSNorm": base, "DyT": twin}
            if mode == "compiled":
                torch._dynamo.reset()
                arms = {k: torch.compile(v) for k, v in arms.items()}
            rows = {}
            for name, model in arms.items():
                with torch.no_grad():
                    rows[f"{name} prefill"] = cuda_time(lambda: model(input_ids=ids, use_cache=False), reps=10)
                opt = torch.optim.SGD(model.parameters(), lr=0.0)
                def train_step():
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        model(input_ids=ids[:4], labels=ids[:4]).loss.backward()
                    opt.zero_grad(set_to_none=True)
                rows[f"{name} train step"] = cuda_time(train_step, reps=5)
            rows["prefill speedup DyT"] = rows["RMSNorm prefill"]["median_us"] / rows["DyT prefill"]["median_us"]
            rows["train speedup DyT"] = rows["RMSNorm train step"]["median_us"] / rows["DyT train step"]["median_us"]
            out[f"{mode}, DyT kernel {kernel}"] = rows
    D.set_kernel("auto")
    return out


save()
print("gpu_check: python checks finished", flush=True)
PY

timeout 330 python "$WORK/check.py"
echo "gpu_check: checks exit $?"

# FSDP2: the accelerate config on every GPU, `dytune train` for 3 steps (full mode, distillation teacher sharded).
cat >"$WORK/fsdp_setup.py" <<'PY'
import json, os
from pathlib import Path
import yaml
from transformers import AutoModelForCausalLM, LlamaConfig
from dytune.testing import tiny_tokenizer
work = Path(os.environ["DYTUNE_GPU_CHECK_WORK"])
tok = tiny_tokenizer(chat_template=True)
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=4,
                  num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=1024)
AutoModelForCausalLM.from_config(cfg).save_pretrained(work / "model")
tok.save_pretrained(work / "model")
chats = [{"messages": [{"role": "user", "content": f"Question {i}: say something."},
                       {"role": "assistant", "content": "Dynamic Tanh replaces the norm. " * (1 + i % 3)}]} for i in range(64)]
(work / "chats.json").write_text(json.dumps(chats))
(work / "train.yaml").write_text(yaml.safe_dump({
    "model": str(work / "model"), "data": {"source": str(work / "chats.json"), "val_fraction": 0.1},
    "norm": "dyt", "mode": "full", "alpha_init": "constant:0.5", "distill": True, "output_dir": str(work / "run"),
    "bf16": True, "per_device_train_batch_size": 2, "max_steps": 3, "logging_steps": 1, "save_strategy": "no",
    "eval_strategy": "no", "report_to": "none", "learning_rate": 1e-4,
    "fsdp": "full_shard auto_wrap", "fsdp_config": {"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                                                   "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT"}}))
PY
FSDP_LOG="$WORK/fsdp.log"
if python "$WORK/fsdp_setup.py" >"$FSDP_LOG" 2>&1; then
  timeout 150 accelerate launch --config_file configs/accelerate_fsdp2.yaml --num_processes "$NGPU" \
    -m dytune.cli train "$WORK/train.yaml" >>"$FSDP_LOG" 2>&1
  FSDP_RC=$?
else
  FSDP_RC=99
fi
export DYTUNE_GPU_CHECK_FSDP_RC="$FSDP_RC" DYTUNE_GPU_CHECK_FSDP_LOG="$FSDP_LOG"
python - <<'PY'
import json, os
from pathlib import Path
path = Path(os.environ["DYTUNE_GPU_CHECK_JSON"])
result = json.loads(path.read_text()) if path.is_file() else {}
work = Path(os.environ["DYTUNE_GPU_CHECK_WORK"])
summary = work / "run" / "summary.json"
result["fsdp2"] = {"config": "configs/accelerate_fsdp2.yaml", "num_processes": int(os.popen(
    "python -c 'import torch; print(torch.cuda.device_count())'").read().strip() or 0),
    "exit_code": int(os.environ["DYTUNE_GPU_CHECK_FSDP_RC"]),
    "summary": json.loads(summary.read_text()) if summary.is_file() else None,
    "log_tail": Path(os.environ["DYTUNE_GPU_CHECK_FSDP_LOG"]).read_text()[-3000:]}
result["finished"] = True
path.write_text(json.dumps(result, indent=2, default=str) + "\n")
print(f"gpu_check: fsdp2 exit {result['fsdp2']['exit_code']}; wrote {path}")
PY
rm -rf "$WORK"
