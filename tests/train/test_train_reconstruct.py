"""Sequential block reconstruction lowers each block's error on the student's own inputs, for either teacher."""

import copy

import pytest
import torch

import dytune
from dytune.testing import tiny_model
from dytune.train.losses import token_nmse
from dytune.train.reconstruct import reconstruct_blocks
from dytune.train.teacher import FrozenTeacher, OriginalNorms


def _batches(n: int = 3):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(1, 300, (2, 12), generator=g),
             "attention_mask": torch.ones(2, 12, dtype=torch.long)} for _ in range(n)]


def _logit_error(model, original, batches) -> float:
    with torch.no_grad():
        return sum(float(token_nmse(model(input_ids=b["input_ids"]).logits, original(input_ids=b["input_ids"]).logits,
                                    b["attention_mask"])) for b in batches) / len(batches)


@pytest.mark.parametrize("arch,teacher_kind", [("llama", "frozen"), ("llama", "original-norms"),
                                               ("gpt2", "frozen")])
def test_reconstruction_lowers_every_blocks_error_and_the_logit_error(arch, teacher_kind):
    original = tiny_model(arch).eval()
    model = copy.deepcopy(original)
    dytune.convert(model, alpha_init="constant:40", progress=False)  # tiny random models: |x| ~ 0.02
    teacher = FrozenTeacher(copy.deepcopy(original)) if teacher_kind == "frozen" else OriginalNorms.from_converted(model)
    batches = _batches()
    before = _logit_error(model, original, batches)
    summary = reconstruct_blocks(model, teacher, batches, steps_per_block=30, lr=3e-3, max_grad_norm=1.0,
                                 progress=False)
    assert summary["tokens"] == 3 * 2 * 12 and summary["batches"] == 3
    blocks = summary["blocks"]
    assert [b["block"] for b in blocks][:2] == [0, 1] and len(blocks) == 3  # two blocks, then the final norm
    for b in blocks[:2]:  # whole blocks train
        assert b["nmse_after"] < 0.7 * b["nmse_before"], b
    assert blocks[2]["nmse_after"] < blocks[2]["nmse_before"]  # the final norm: a DyT alone cannot normalise
    assert _logit_error(model, original, batches) < 0.85 * before
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    assert summary["bytes_per_token"] == 3 * 64 * 4


def test_max_tokens_limits_the_cache():
    original = tiny_model("llama").eval()
    model = copy.deepcopy(original)
    dytune.convert(model, alpha_init="constant:40", progress=False)
    summary = reconstruct_blocks(model, FrozenTeacher(original), _batches(5), steps_per_block=1, max_tokens=30,
                                 progress=False)
    assert summary["batches"] == 2 and summary["tokens"] == 48


def test_token_nmse_weights_each_token_once_and_the_sink_on_top():
    target = torch.ones(1, 3, 4)
    target[0, 0] *= 100  # a massive-activation first token
    student = target.clone()
    student[0, 0] *= 1.1  # 10% off on the sink, exact elsewhere
    mask = torch.ones(1, 3)
    assert float(token_nmse(student, target, mask)) == pytest.approx(0.01 / 3)
    assert float(token_nmse(student, target, mask, sink_weight=2.0)) == pytest.approx(0.02 / 4)


def test_after_a_linear_refit_the_final_norm_is_left_to_its_refitted_head(tmp_path):
    """A linear refit fits the LM head to the final DyT's own output, so the original norm's output is not
    that DyT's target: reconstruction of the saved, reloaded DyT model trains the blocks and leaves the final DyT."""
    from dytune.testing import tiny_tokenizer

    tiny_model("llama").save_pretrained(tmp_path / "original")
    original = dytune.load_model(str(tmp_path / "original")).eval()
    model = dytune.load_model(str(tmp_path / "original"))
    texts = [f"The quick brown fox number {i} jumps over the lazy dog, again and again." for i in range(24)]
    dytune.convert(model, tokenizer=tiny_tokenizer(), calibration=texts, calibration_refit="linear", progress=False)
    dytune.save(model, tmp_path / "dyt", tiny_tokenizer())
    model = dytune.load(tmp_path / "dyt")
    final = {k: v.clone() for k, v in model.model.norm.state_dict().items()}
    summary = reconstruct_blocks(model, FrozenTeacher(original), _batches(), steps_per_block=5, lr=1e-3,
                                 max_grad_norm=1.0, progress=False)
    blocks = summary["blocks"]
    assert [b["block"] for b in blocks] == [0, 1, "model.norm"]
    assert "nmse_after" in blocks[0] and "LM head was refitted" in blocks[2]["skipped"]
    assert all(torch.equal(v, model.model.norm.state_dict()[k]) for k, v in final.items())


def test_an_embedding_norm_is_left_to_end_to_end_training():
    """BLOOM's embedding norm sits before the first block: the last hidden state is not its input."""
    original = tiny_model("bloom").eval()
    model = copy.deepcopy(original)
    dytune.convert(model, alpha_init="constant:40", progress=False)
    summary = reconstruct_blocks(model, FrozenTeacher(copy.deepcopy(original)), _batches(), steps_per_block=2,
                                 lr=1e-3, max_grad_norm=1.0, progress=False)
    outer = {b["block"]: b for b in summary["blocks"] if isinstance(b["block"], str)}
    assert set(outer) == {"transformer.word_embeddings_layernorm", "transformer.ln_f"}
    assert "before the first block" in outer["transformer.word_embeddings_layernorm"]["skipped"]
    assert outer["transformer.ln_f"]["nmse_after"] < outer["transformer.ln_f"]["nmse_before"]
