"""`dytune.save(..., portable=True)`: the directory carries its modeling code, so a user without dytune loads
it with `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` and gets the very same model."""

import json
import sys

import pytest
import torch

import dytune
from dytune.portable import AUTO_MAP, CODE_FILES
from dytune.testing import (TINY_ARCHS, run_without_dytune, save_reference, tiny_dyt_checkpoint, tiny_model,
                            tiny_tokenizer)

IDS = torch.tensor([[1, 5, 9, 30, 2, 7, 11, 40]])


@pytest.fixture(scope="module")
def portable_dirs(tmp_path_factory):
    """Every matrix architecture (heads alternately tied), converted from a checkpoint on disk, saved portable."""
    root = tmp_path_factory.mktemp("portable")
    dirs = {}
    for i, arch in enumerate(TINY_ARCHS):
        model, _ = tiny_dyt_checkpoint(arch, root / arch, tokenizer=tiny_tokenizer(), portable=True,
                                       per_channel=(arch == "gpt2"), tie_word_embeddings=bool(i % 2))
        save_reference(model, root / arch / "reference.pt", IDS)
        dirs[arch] = root / arch
    return dirs


def test_portable_directory_has_its_code_and_auto_map(portable_dirs):
    out = portable_dirs["llama"] / "dyt"
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP and config["model_type"] == "dytune"
    for name in CODE_FILES:
        code = (out / name).read_text()
        imports = {line.split()[1].split(".")[0] for line in code.splitlines() if line.startswith(("import ", "from "))}
        assert imports <= {"torch", "transformers", "", "configuration_dytune"}, imports  # "" is the relative import
    assert 'BASE_MODEL_TYPE = "llama"' not in (portable_dirs["gpt_neox"] / "dyt" / "configuration_dytune.py").read_text()
    assert "trust_remote_code=True" in (out / "README.md").read_text()


def test_loads_exactly_where_dytune_is_not_installed(portable_dirs, tmp_path):
    llama = str(portable_dirs["llama"] / "dyt")
    with torch.no_grad():  # bf16 as dytune loads it: DyT stays float32, the rest bf16
        torch.save(dytune.load(llama, dtype=torch.bfloat16)(IDS).logits, tmp_path / "bf16.pt")
    stdout, stderr = run_without_dytune(f"""
        import json, torch
        try:
            import dytune
            print("DYTUNE IMPORTABLE")
        except ModuleNotFoundError:
            pass
        from transformers import AutoModelForCausalLM, AutoTokenizer
        for arch, root in {[(a, str(p)) for a, p in portable_dirs.items()]!r}:
            model, info = AutoModelForCausalLM.from_pretrained(root + "/dyt", trust_remote_code=True,
                                                               output_loading_info=True)
            model.eval()
            ref = torch.load(root + "/reference.pt")
            state = model.state_dict()
            with torch.no_grad():
                logits = model(torch.tensor({IDS.tolist()})).logits
            dyt = [n for n, m in model.named_modules() if type(m).__name__ == "DyT"]
            print(json.dumps({{
                "arch": arch, "class": type(model).__name__, "module": type(model).__module__,
                "info": {{k: [str(x) for x in v] for k, v in info.items() if v}},
                "same_keys": set(state) == set(ref["state"]),
                "unequal": [k for k in ref["state"] if k in state and not torch.equal(state[k], ref["state"][k])],
                "logits_equal": torch.equal(logits, ref["logits"]), "n_dyt": len(dyt),
                "tokenizer": AutoTokenizer.from_pretrained(root + "/dyt", trust_remote_code=True).decode([5, 9]) != "",
            }}))
        bf16 = AutoModelForCausalLM.from_pretrained({llama!r}, trust_remote_code=True, dtype=torch.bfloat16)
        dyt_dtypes = {{str(p.dtype) for m in bf16.modules() if type(m).__name__ == "DyT" for p in m.parameters()}}
        with torch.no_grad():
            same = torch.equal(bf16(torch.tensor({IDS.tolist()})).logits, torch.load({str(tmp_path / "bf16.pt")!r}))
        print("BF16", sorted(dyt_dtypes), str(bf16.get_input_embeddings().weight.dtype), same)
    """, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert "DYTUNE IMPORTABLE" not in stdout
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert [row["arch"] for row in rows] == list(TINY_ARCHS), (stdout, stderr[-3000:])
    for row in rows:
        assert row["module"].startswith("transformers_modules."), row  # the directory's code, not dytune's
        assert row["class"].startswith("DyT") and row["n_dyt"] > 0, row
        assert row["info"] == {} and row["same_keys"] and row["unequal"] == [], row
        assert row["logits_equal"] and row["tokenizer"], row
    assert "BF16 ['torch.float32'] torch.bfloat16 True" in stdout
    assert "newly initialized" not in stderr and "UNEXPECTED" not in stderr and "model of type" not in stderr


def test_without_trust_remote_code_it_refuses_rather_than_guessing(portable_dirs, tmp_path):
    stdout, _ = run_without_dytune(f"""
        from transformers import AutoModelForCausalLM
        try:
            AutoModelForCausalLM.from_pretrained({str(portable_dirs['llama'] / 'dyt')!r}, trust_remote_code=False)
        except ValueError as err:
            print("REFUSED", "trust_remote_code" in str(err))
        else:
            print("LOADED")
    """, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert "REFUSED True" in stdout


def test_dytune_never_runs_the_directory_code(portable_dirs):
    """With dytune imported, its own registered classes win, even when a caller passes trust_remote_code=True."""
    from transformers import AutoModelForCausalLM

    ref = torch.load(portable_dirs["gpt_neox"] / "reference.pt")
    for model in (dytune.load(str(portable_dirs["gpt_neox"] / "dyt")),
                  AutoModelForCausalLM.from_pretrained(portable_dirs["gpt_neox"] / "dyt", trust_remote_code=True)):
        assert type(model).__module__ == "dytune.hf_registration"
        with torch.no_grad():
            assert torch.equal(model.eval()(IDS).logits, ref["logits"])
    assert not [name for name in sys.modules if name.startswith("transformers_modules")]


def test_resaving_keeps_or_drops_the_code_consistently(portable_dirs, tmp_path):
    model = dytune.load(str(portable_dirs["qwen3"] / "dyt"))
    dytune.save(model, tmp_path / "plain-again")
    config = json.loads((tmp_path / "plain-again" / "config.json").read_text())
    assert "auto_map" not in config  # no pointer to code that is not there
    assert not any((tmp_path / "plain-again" / name).exists() for name in CODE_FILES)
    dytune.save(model, tmp_path / "portable-again", portable=True)
    assert json.loads((tmp_path / "portable-again" / "config.json").read_text())["auto_map"] == AUTO_MAP


def test_portable_needs_a_dyt_model(tmp_path):
    with pytest.raises(dytune.DytuneError, match="no DyT layers"):
        dytune.save(tiny_model("llama"), tmp_path / "out", portable=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_embedded_smollm2_shared_portable_loads_without_dytune(tmp_path):
    """The real 135M checkpoint: converted, saved portable, loaded where dytune is not installed; exact against
    dytune's reference DyT kernel (the portable code's formula). dytune's default kernel on inputs this long is
    the fused one, within 2e-7 per layer, which 30 layers of an unrecovered conversion amplify (docs/compatibility.md)."""
    from dytune.dyt import set_kernel

    model, tokenizer = dytune.load("smollm2-135m"), dytune.load_tokenizer("smollm2-135m")
    dytune.convert(model, alpha_init="paper")
    dytune.save(model, tmp_path / "dyt", tokenizer, portable=True)
    text = "The capital of France is Paris. Dynamic Tanh replaces the norms. " * 3
    ids = tokenizer(text, return_tensors="pt").input_ids
    previous = set_kernel("reference")
    try:
        with torch.no_grad():
            reference = model(ids).logits
    finally:
        set_kernel(previous)
    torch.save(reference, tmp_path / "reference.pt")
    stdout, _ = run_without_dytune(f"""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'dyt')!r}, trust_remote_code=True)
        ids = AutoTokenizer.from_pretrained({str(tmp_path / 'dyt')!r}, trust_remote_code=True)(
            {text!r}, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits
        print("EXACT", torch.equal(logits, torch.load({str(tmp_path / 'reference.pt')!r})))
    """, timeout=600, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert "EXACT True" in stdout
