"""A DyT model works, unchanged, in the clients a user already has: transformers pipelines and generate, TRL,
PEFT, lm-evaluation-harness, torch.compile and torch.export; none of them prints a load report."""

import pytest
import torch

import dytune
from dytune.testing import TINY_ARCHS, run_in_fresh_process, tiny_dyt_checkpoint, tiny_tokenizer

# What transformers prints when a load is not exact or a config is misread: never for a DyT model.
UNACTIONABLE = ("newly initialized", "model of type", "UNEXPECTED", "MISSING", "LOAD REPORT",
                "not used when initializing", "were not initialized", "We strongly recommend passing in an `attention_mask`")
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
# 128 tokens x 64 channels = 8192 elements: the DyT kernel's CPU fused path (dytune.dyt.FUSED_MIN_ELEMENTS)
LONG_IDS = (torch.arange(128) * 37 % 317 + 3).unsqueeze(0)


def assert_quiet(printed: str) -> None:
    shown = [phrase for phrase in UNACTIONABLE if phrase in printed]
    assert not shown, printed[-3000:]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A tiny DyT Llama with a ChatML tokenizer (its config's special ids match the tokenizer's), on disk."""
    tokenizer = tiny_tokenizer()
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    _, out = tiny_dyt_checkpoint("llama", tmp_path_factory.mktemp("chat"), alpha_init="paper", tokenizer=tokenizer,
                                 **ids)
    return out


def test_text_generation_pipeline_with_chat_input(chat_dir, capfd):
    from transformers import pipeline

    capfd.readouterr()
    pipe = pipeline("text-generation", model=str(chat_dir), device="cpu")
    assert dytune.dyt_modules(pipe.model)  # the pipeline built the DyT model, not a plain one
    out = pipe(CHAT, max_new_tokens=8, do_sample=False)
    assert_quiet("".join(capfd.readouterr()))
    reply = out[0]["generated_text"][-1]
    # the same as templating and generating by hand
    model, tokenizer = dytune.load(str(chat_dir)), tiny_tokenizer()
    enc = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    tokens = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert reply == {"role": "assistant",
                     "content": tokenizer.decode(tokens[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)}


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_generate_with_and_without_kv_cache_gives_the_same_tokens(arch, tmp_path):
    _, out = tiny_dyt_checkpoint(arch, tmp_path)
    model = dytune.load(str(out))
    prompt = torch.tensor([[5, 9, 30, 2, 7, 11]])
    runs = [model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False,
                           use_cache=cache, output_scores=True, return_dict_in_generate=True)
            for cache in (True, False)]
    assert runs[0].sequences.shape == (1, 16)
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    for with_cache, without in zip(runs[0].scores, runs[1].scores):
        torch.testing.assert_close(with_cache, without, atol=1e-4, rtol=1e-4)


def test_trl_sft_trainer_trains_alpha_and_the_result_reloads_exactly(chat_dir, tmp_path, capfd):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = dytune.load(str(chat_dir)), tiny_tokenizer()
    alpha_before = {name: dyt.alpha.detach().clone() for name, dyt in dytune.dyt_modules(model)}
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"},
         {"role": "assistant", "content": "The capital of France is Paris."}],
        [{"role": "user", "content": "Give three tips for staying healthy."},
         {"role": "assistant", "content": "Eat a balanced diet, exercise, and sleep well."}],
    ] * 4
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=2,
                     learning_rate=5e-2, report_to="none", save_strategy="no", logging_steps=1, max_length=64,
                     bf16=False, use_cpu=True, dataloader_num_workers=0, seed=0, disable_tqdm=True)
    capfd.readouterr()
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"messages": conversations}),
                         processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "trained"))
    assert_quiet("".join(capfd.readouterr()))
    trained = dict(dytune.dyt_modules(trainer.model))
    moved = [name for name, alpha in alpha_before.items() if not torch.equal(trained[name].alpha, alpha)]
    assert moved == list(alpha_before)  # every alpha trained
    reloaded = dytune.load(str(tmp_path / "trained"))
    mine, theirs = trainer.model.state_dict(), reloaded.state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_peft_lora_merged_into_a_dyt_model_saves_and_reloads_exactly(tmp_path):
    """LoRA on a converted Pythia (untied, renamed head), merged, saved, reloaded: the merged model is kept."""
    from peft import LoraConfig, get_peft_model

    _, out = tiny_dyt_checkpoint("gpt_neox", tmp_path)
    peft_model = get_peft_model(dytune.load(str(out)), LoraConfig(
        r=4, target_modules=["query_key_value", "dense_4h_to_h"], task_type="CAUSAL_LM", init_lora_weights=False))
    with torch.no_grad():
        with_adapter = peft_model.eval()(LONG_IDS).logits
        merged = peft_model.merge_and_unload()
        torch.testing.assert_close(merged(LONG_IDS).logits, with_adapter, atol=1e-5, rtol=1e-5)
        dytune.save(merged, tmp_path / "merged")
        assert torch.equal(dytune.load(str(tmp_path / "merged"))(LONG_IDS).logits, merged(LONG_IDS).logits)


def test_lm_eval_harness_loglikelihood_matches_the_model(chat_dir, capfd):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = dytune.load(str(chat_dir)), tiny_tokenizer()
    capfd.readouterr()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu")
    pairs = [("The capital of France is", " Paris."), ("def add(a, b):", "\n    return a + b"),
             ("Eat a balanced", " diet")]
    results = lm.loglikelihood([Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
                                for i, pair in enumerate(pairs)])
    assert_quiet("".join(capfd.readouterr()))
    for (context, continuation), (loglik, greedy) in zip(pairs, results):
        context_ids, whole = lm.tok_encode(context), lm.tok_encode(context + continuation)
        assert whole[:len(context_ids)] == context_ids
        with torch.no_grad():
            logprobs = model(torch.tensor([whole])).logits.log_softmax(-1)[0, len(context_ids) - 1:-1]
        targets = torch.tensor(whole[len(context_ids):])
        expected = logprobs.gather(-1, targets[:, None]).sum().item()
        assert loglik == pytest.approx(expected, abs=1e-4)
        assert greedy == bool((logprobs.argmax(-1) == targets).all())


def test_torch_compile_matches_eager(chat_dir):
    model = dytune.load(str(chat_dir))
    compiled = torch.compile(model)
    with torch.no_grad():
        for ids in (LONG_IDS, LONG_IDS[:, :8]):  # the DyT fused path, and the reference path
            torch.testing.assert_close(compiled(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


def test_torch_export_matches_eager(chat_dir):
    model = dytune.load(str(chat_dir))
    with torch.no_grad():
        for ids in (LONG_IDS, LONG_IDS[:, :8]):  # eager: the fused kernel, then the reference formula
            program = torch.export.export(model, (ids,), kwargs={"use_cache": False}, strict=False)
            # the exported program holds plain torch ops (no dytune custom op): exact on the reference path
            exported, eager = program.module()(ids, use_cache=False).logits, model(ids, use_cache=False).logits
            torch.testing.assert_close(exported, eager, atol=1e-5, rtol=1e-5)
            if ids.numel() * 64 < 8192:
                assert torch.equal(exported, eager)


def test_torch_export_with_a_dynamic_sequence_length(chat_dir):
    from torch.export import Dim

    model = dytune.load(str(chat_dir))
    program = torch.export.export(model, (LONG_IDS[:, :16],), kwargs={"use_cache": False}, strict=False,
                                  dynamic_shapes=({1: Dim("seq", min=2, max=127)}, None))
    with torch.no_grad():
        for n in (4, 16, 127):
            assert torch.equal(program.module()(LONG_IDS[:, :n], use_cache=False).logits,
                               model(LONG_IDS[:, :n], use_cache=False).logits)


def test_torch_export_with_a_dynamic_sequence_length_across_the_kernel_threshold(chat_dir):
    # under export DyT takes the reference formula whatever the size (the fused kernel's size test would be a guard)
    from torch.export import Dim

    model = dytune.load(str(chat_dir))
    program = torch.export.export(model, (LONG_IDS[:, :16],), kwargs={"use_cache": False}, strict=False,
                                  dynamic_shapes=({1: Dim("seq", min=2, max=128)}, None))
    with torch.no_grad():
        for n in (4, 128):
            torch.testing.assert_close(program.module()(LONG_IDS[:, :n], use_cache=False).logits,
                                       model(LONG_IDS[:, :n], use_cache=False).logits, atol=1e-5, rtol=1e-5)


def _printed_by_a_user_session(path, adapter_dir) -> set[str]:
    """What a fresh process prints (transformers warns once per process) while a user loads `path` every way."""
    _, printed = run_in_fresh_process(f"""
        import dytune, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
        from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model
        path = {str(path)!r}
        model = dytune.load(path)
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
        AutoTokenizer.from_pretrained(path)
        pipeline("text-generation", model=path, device="cpu")(
            [{{"role": "user", "content": "hi"}}], max_new_tokens=2, do_sample=False)
        get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained({str(adapter_dir)!r})
        AutoPeftModelForCausalLM.from_pretrained({str(adapter_dir)!r})
    """, with_stderr=True)
    return {line.replace(str(path), "MODEL").replace(str(adapter_dir), "ADAPTER")
            for line in printed.replace("\r", "\n").splitlines()
            if line.strip() and not line.startswith(("Loading weights:", "Writing model shards:"))}


def test_a_dyt_model_prints_nothing_its_plain_original_does_not(chat_dir, tmp_path):
    """Loading a DyT model every way a user does prints exactly what the same session prints for the
    original checkpoint (today: one PEFT-vs-transformers deprecation, not dytune's), nothing more."""
    dyt = _printed_by_a_user_session(chat_dir, tmp_path / "dyt-lora")
    plain = _printed_by_a_user_session(chat_dir.parent / "plain", tmp_path / "plain-lora")
    assert dyt == plain
    assert_quiet("\n".join(dyt))


def test_converting_prints_no_attention_mask_warning(tmp_path):
    _, printed = run_in_fresh_process(f"""
        from dytune.testing import tiny_dyt_checkpoint
        tiny_dyt_checkpoint("gpt2", {str(tmp_path)!r})
    """, with_stderr=True)
    assert_quiet(printed)
