"""Every supported architecture, tied and untied head, the user's way: a checkpoint on disk -> from_pretrained
-> dytune.convert -> dytune.save -> load in a fresh process. Every tensor and the logits must come back exactly,
with a clean load report; all 28 cases share one fresh interpreter."""

import json

import pytest
import torch

import dytune
from dytune.testing import TINY_ARCHS, run_in_fresh_process, save_reference, tiny_dyt_checkpoint, tiny_model

IDS = torch.tensor([[1, 5, 9, 30, 2, 7, 11, 40]])
CASES = [(arch, tied) for arch in TINY_ARCHS for tied in (False, True)]
# What transformers prints when a load is not exact; none of it may appear when a DyT model loads.
LOAD_REPORT_WORDS = ("newly initialized", "model of type", "UNEXPECTED", "MISSING", "MISMATCH",
                     "not used when initializing", "were not initialized")


def _case_id(case) -> str:
    arch, tied = case
    return f"{arch}-{'tied' if tied else 'untied'}"


def _head_is_tied(model) -> bool:
    return model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Convert and save every case here; reload all of them in one fresh process; return its findings."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("matrix")
    local = {}
    for i, case in enumerate(CASES):
        arch, tied = case
        case_dir = root / _case_id(case)
        # both fast alpha rules across the matrix; qk norms (Qwen3, OLMo2) converted too
        model, _ = tiny_dyt_checkpoint(arch, case_dir, alpha_init="paper" if i % 4 < 2 else 0.8,
                                       tie_word_embeddings=tied)
        save_reference(model, case_dir / "reference.pt", IDS)
        _, info = AutoModelForCausalLM.from_pretrained(case_dir / "plain", output_loading_info=True)
        local[_case_id(case)] = {"plain_info": info, "tied": _head_is_tied(model),
                                 "n_dyt": len(dytune.dyt_modules(model)), "dir": str(case_dir)}
    stdout = run_in_fresh_process(f"""
        import json, sys, torch, dytune
        from transformers import AutoModelForCausalLM
        for name, case_dir in {[(k, v["dir"]) for k, v in local.items()]!r}:
            print("@@CASE", name, file=sys.stderr, flush=True)
            ref = torch.load(case_dir + "/reference.pt")
            found = {{"name": name}}
            try:
                model, info = AutoModelForCausalLM.from_pretrained(case_dir + "/dyt", output_loading_info=True)
                strict = dytune.load(case_dir + "/dyt")  # the strict loader must accept it too
            except Exception as err:
                found["error"] = f"{{type(err).__name__}}: {{err}}"
                print(json.dumps(found))
                continue
            model.eval()
            state = model.state_dict()
            found["info"] = {{k: [str(x) for x in v] for k, v in info.items() if v}}
            found["missing"] = sorted(set(ref["state"]) - set(state))
            found["extra"] = sorted(set(state) - set(ref["state"]))
            found["unequal"] = sorted(k for k in set(state) & set(ref["state"])
                                      if not torch.equal(state[k], ref["state"][k]))
            with torch.no_grad():
                found["logits_equal"] = torch.equal(model(torch.tensor({IDS.tolist()})).logits, ref["logits"])
                found["strict_logits_equal"] = torch.equal(strict(torch.tensor({IDS.tolist()})).logits,
                                                           ref["logits"])
            found["tied"] = (model.get_output_embeddings().weight.data_ptr()
                             == model.get_input_embeddings().weight.data_ptr())
            found["n_dyt"] = len(dytune.dyt_modules(model))
            found["class"] = type(model).__name__
            print(json.dumps(found))
        print("@@CASE end", file=sys.stderr, flush=True)
    """, timeout=600, with_stderr=True)
    out, err = stdout
    fresh = {row["name"]: row for row in map(json.loads, (line for line in out.splitlines() if line.startswith("{")))}
    printed = {}
    for chunk in err.split("@@CASE ")[1:]:
        name, _, text = chunk.partition("\n")
        printed[name] = text
    return local, fresh, printed


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_converted_checkpoint_reloads_exactly_in_a_fresh_process(matrix, case):
    local, fresh, printed = matrix
    name = _case_id(case)
    mine, theirs = local[name], fresh[name]
    assert not any(mine["plain_info"].values()), mine["plain_info"]  # the source checkpoint itself loads cleanly
    assert "error" not in theirs, theirs.get("error")
    assert theirs["info"] == {}, theirs["info"]
    assert (theirs["missing"], theirs["extra"], theirs["unequal"]) == ([], [], [])
    assert theirs["logits_equal"] and theirs["strict_logits_equal"]
    assert theirs["tied"] == mine["tied"] == case[1]
    assert theirs["n_dyt"] == mine["n_dyt"] > 0
    assert theirs["class"].startswith("DyT")
    shown = [word for word in LOAD_REPORT_WORDS if word in printed[name]]
    assert not shown, printed[name]


def test_nothing_but_the_progress_bar_is_printed_while_loading(matrix):
    _, _, printed = matrix
    noisy = {}
    for name, text in printed.items():
        lines = [line for line in text.replace("\r", "\n").splitlines()
                 if line.strip() and not line.startswith("Loading weights:")]
        if lines:
            noisy[name] = lines
    assert not noisy, noisy


def test_an_architecture_that_cannot_be_converted_is_an_error_listing_why(tmp_path):
    """A checkpoint whose norm dytune does not recognise (here: Gemma-style `1 + weight` on a *centred*
    LayerNorm, i.e. neither of the two supported forms) is refused before anything is written."""
    from torch import nn
    from transformers import AutoModelForCausalLM

    class ShiftedNorm(nn.Module):  # neither LayerNorm nor RMSNorm: mean-centred, then x * rsqrt(var) * 2
        def __init__(self, width):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(width))

        def forward(self, x):
            return 2 * self.weight * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1)

    tiny_model("llama").save_pretrained(tmp_path / "plain")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    model.model.layers[1].post_attention_layernorm = ShiftedNorm(64)
    with pytest.raises(dytune.DytuneError, match=r"model\.layers\.1\.post_attention_layernorm \(ShiftedNorm\)"):
        dytune.convert(model, alpha_init=0.8)
    assert not dytune.dyt_modules(model)  # untouched: nothing was half-converted
    assert not dytune.hf_registration.is_dyt_model(model)
