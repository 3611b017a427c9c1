import json

import pytest
import torch

import dytune
from dytune.dyt import DyT
from dytune.testing import run_in_fresh_process as _run, tiny_model, tiny_tokenizer

IDS = torch.tensor([[1, 5, 9, 30, 2, 7, 11, 40]])


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox", "gemma2"])
def saved(request, tmp_path_factory):
    arch = request.param
    model = tiny_model(arch)
    dytune.convert(model, alpha_init=0.9, per_channel=(arch == "gpt2"))
    with torch.no_grad():  # make alpha values that no initialiser would produce (calibration is tested elsewhere)
        for _, dyt in dytune.dyt_modules(model):
            dyt.alpha.mul_(1.2345)
    out = tmp_path_factory.mktemp(arch) / "dyt"
    dytune.save(model, out, tiny_tokenizer())
    torch.save(model(IDS).logits, out.parent / "logits.pt")  # test-only reference, never loaded by dytune
    return arch, out, model


def test_saved_directory_layout(saved):
    arch, out, model = saved
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "dytune"
    assert config["dyt"]["base_model_type"] == arch
    assert len(config["dyt"]["layers"]) == len(dytune.dyt_modules(model))
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    card = (out / "README.md").read_text()
    assert "import dytune" in card and "vLLM" in card and "llama.cpp" in card
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as fh:
        keys = set(fh.keys())
    assert {f"{name}.alpha" for name, _ in dytune.dyt_modules(model)} <= keys


@pytest.fixture(scope="module")
def all_saved(tmp_path_factory):
    """The four saved archs at once, so the fresh-process checks start Python only once each."""
    dirs = []
    for arch in ["llama", "gpt2", "gpt_neox", "gemma2"]:
        model = tiny_model(arch)
        dytune.convert(model, alpha_init=0.9, per_channel=(arch == "gpt2"))
        with torch.no_grad():
            for _, dyt in dytune.dyt_modules(model):
                dyt.alpha.mul_(1.2345)
        out = tmp_path_factory.mktemp(arch) / "dyt"
        dytune.save(model, out)
        torch.save(model(IDS).logits, out.parent / "logits.pt")  # test-only reference
        dirs.append(str(out))
    return dirs


def test_fresh_process_load_is_bit_identical(all_saved):
    stdout = _run(f"""
        import torch, dytune
        from pathlib import Path
        for out in {all_saved!r}:
            model = dytune.load(out)
            ref = torch.load(str(Path(out).parent / "logits.pt"))
            print("EQUAL", torch.equal(model(torch.tensor({IDS.tolist()})).logits, ref), type(model).__name__)
    """)
    assert stdout.count("EQUAL True") == 4, stdout


def test_auto_from_pretrained_after_import_restores_alpha(saved):
    arch, out, model = saved
    expected = {name: dyt.alpha.detach().clone() for name, dyt in dytune.dyt_modules(model)}
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out)
    got = dict(dytune.dyt_modules(loaded))
    assert set(got) == set(expected)
    for name, alpha in expected.items():
        assert torch.equal(got[name].alpha, alpha)


def test_plain_transformers_without_dytune_fails_loudly(all_saved):
    stdout = _run(f"""
        from transformers import AutoModelForCausalLM
        for out in {all_saved!r}:
            try:
                AutoModelForCausalLM.from_pretrained(out)
            except Exception as err:
                print("REFUSED", "dytune" in str(err))
            else:
                print("LOADED SILENTLY")
    """)
    assert stdout.count("REFUSED True") == 4, stdout


def test_bf16_load_keeps_dyt_float32(saved):
    arch, out, _ = saved
    model = dytune.load(str(out), dtype=torch.bfloat16)
    dyt_params = [p for _, m in dytune.dyt_modules(model) for p in m.parameters()]
    assert dyt_params and all(p.dtype == torch.float32 for p in dyt_params)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert torch.isfinite(model(IDS).logits).all()


def test_dyt_class_on_plain_checkpoint_initialises_alpha(tmp_path):
    """transformers 5 initialises modules with the enclosing model's _init_weights: DyT must not be left as
    uninitialised memory when a DyT model is built over a checkpoint that has no alpha."""
    plain = tiny_model("llama")
    plain.save_pretrained(tmp_path / "plain")
    converted = tiny_model("llama")
    dytune.convert(converted, alpha_init=0.75)
    cls = type(converted)
    config = converted.config
    with pytest.raises(dytune.DytuneError, match="alpha"):  # missing DyT weights are an error by default
        cls.from_pretrained(tmp_path / "plain", config=config)
    loaded = cls.from_pretrained(tmp_path / "plain", config=config, dytune_strict=False)
    for _, dyt in dytune.dyt_modules(loaded):
        assert torch.allclose(dyt.alpha, torch.tensor([0.75]))
        assert torch.isfinite(dyt.weight).all()


def test_save_refuses_existing_dir_and_is_atomic(tmp_path):
    model = tiny_model("llama")
    dytune.convert(model, alpha_init=1.0)
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(dytune.DytuneError, match="already exists"):
        dytune.save(model, target)
    dytune.save(model, target, overwrite=True)
    assert (target / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_revert_impossible_after_reload(saved):
    _, out, _ = saved
    model = dytune.load(str(out))
    with pytest.raises(ValueError, match="converted in this process"):
        dytune.revert(model)
