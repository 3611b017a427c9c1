"""Loading is exact or loud: key renames survive conversion, and a weight that does not load is an error."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import dytune
from dytune.testing import run_in_fresh_process, tiny_model

IDS = torch.tensor([[1, 5, 9, 30, 2, 7, 11, 40]])


def _user_checkpoint(arch: str, tmp_path):
    """A plain checkpoint on disk, loaded back the way a user loads a Hub model."""
    from transformers import AutoModelForCausalLM

    tiny_model(arch).save_pretrained(tmp_path / "plain")
    return AutoModelForCausalLM.from_pretrained(tmp_path / "plain")


def test_pythia_checkpoint_round_trips_exactly_in_a_fresh_process(tmp_path):
    # GPT-NeoX checkpoints store the head as `embed_out`; transformers 5 renames it to `lm_head` by class.
    model = _user_checkpoint("gpt_neox", tmp_path)
    assert "embed_out.weight" in load_file(tmp_path / "plain" / "model.safetensors")
    dytune.convert(model, alpha_init=0.9)
    dytune.save(model, tmp_path / "dyt")
    torch.save(model(IDS).logits, tmp_path / "logits.pt")
    out = run_in_fresh_process(f"""
        import torch, dytune
        model = dytune.load({str(tmp_path / 'dyt')!r})
        ref = torch.load({str(tmp_path / 'logits.pt')!r})
        print((model(torch.tensor({IDS.tolist()})).logits - ref).abs().max().item())
    """)
    assert float(out.strip().splitlines()[-1]) == 0.0


def test_from_pretrained_of_a_dyt_directory_with_a_missing_weight_raises(tmp_path):
    model = tiny_model("llama")
    dytune.convert(model, alpha_init=0.9)
    dytune.save(model, tmp_path / "dyt")
    weights = load_file(tmp_path / "dyt" / "model.safetensors")
    dropped = "model.layers.1.input_layernorm.alpha"
    del weights[dropped]
    save_file(weights, tmp_path / "dyt" / "model.safetensors", metadata={"format": "pt"})
    from transformers import AutoModelForCausalLM

    with pytest.raises(dytune.DytuneError, match=dropped.replace(".", r"\.")):
        AutoModelForCausalLM.from_pretrained(tmp_path / "dyt")
    with pytest.raises(dytune.DytuneError, match="missing from the checkpoint"):
        dytune.load(str(tmp_path / "dyt"))
    # explicit opt-outs load it anyway
    assert dytune.load(str(tmp_path / "dyt"), strict=False) is not None
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "dyt", dytune_strict=False) is not None


def test_plain_checkpoint_with_an_unexpected_weight_raises(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "plain")
    weights = load_file(tmp_path / "plain" / "model.safetensors")
    weights["model.layers.0.extra.weight"] = torch.zeros(3)
    save_file(weights, tmp_path / "plain" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(dytune.DytuneError, match=r"in the checkpoint but not in the model: model\.layers\.0\.extra"):
        dytune.load(str(tmp_path / "plain"))


@pytest.mark.parametrize("task_type", [None, "CAUSAL_LM"])
def test_peft_adapter_of_a_dyt_model_reloads_through_auto_peft(tmp_path, task_type, capfd):
    from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model

    model = tiny_model("llama")
    dytune.convert(model, alpha_init=0.9)
    dytune.save(model, tmp_path / "dyt")
    base = dytune.load(str(tmp_path / "dyt"))
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], task_type=task_type,
                                                 init_lora_weights=False))
    peft_model.eval()
    with torch.no_grad():
        ref = peft_model(IDS).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    if task_type is None:
        mapping = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["auto_mapping"]
        assert mapping["parent_library"] == "dytune.hf_registration"
    capfd.readouterr()
    reloaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, ref)
    assert dytune.dyt_modules(reloaded)
    printed = "".join(capfd.readouterr())
    assert "to instantiate a model of type" not in printed
