"""Fixtures for the evaluation tests: tiny models saved to directories, tiny judges, question files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dytune.testing import tiny_model, tiny_tokenizer

PAIRRM_SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "<|source|>", "<|candidate|>", "<|candidate1|>",
                   "<|candidate2|>"]


def encoder_tokenizer(extra_specials: list[str] | None = None):
    """A tiny BPE tokenizer that wraps text as `[CLS] ... [SEP]`, like DeBERTa-v3's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = PAIRRM_SPECIALS[:4] + (extra_specials or [])
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world this is a good answer", "the capital of France is Paris"] * 3,
                            trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                   unk_token="[UNK]", additional_special_tokens=extra_specials or [],
                                   model_max_length=512)


def tiny_deberta_config(vocab_size: int, **extra):
    """DeBERTa-v3 layout (relative attention, shared keys, p2c/c2p), 2 layers, 32 wide."""
    from transformers import DebertaV2Config

    return DebertaV2Config(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=512, relative_attention=True,
                           position_buckets=64, norm_rel_ebd="layer_norm", pos_att_type=["p2c", "c2p"],
                           position_biased_input=False, share_att_key=True, max_relative_positions=-1,
                           pad_token_id=0, **extra)


def pairrm_config(tokenizer):
    ids = tokenizer.convert_tokens_to_ids(PAIRRM_SPECIALS)
    return tiny_deberta_config(len(tokenizer), n_tasks=1, drop_out=0.05, sep_token_id=ids[2],
                               source_prefix_id=ids[4], cand_prefix_id=ids[5], cand1_prefix_id=ids[6],
                               cand2_prefix_id=ids[7], architectures=["DebertaV2PairRM"])


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Spread-out random weights (the default init gives near-constant outputs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name and name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif p.dim() < 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)


@pytest.fixture(scope="session")
def pairrm_tokenizer():
    return encoder_tokenizer(PAIRRM_SPECIALS[4:])


@pytest.fixture(scope="session")
def tiny_pairrm_dir(tmp_path_factory, pairrm_tokenizer) -> Path:
    """A random PairRM checkpoint in PairRM-hf's layout (config fields, key names, tokenizer specials)."""
    from dytune.eval.pairrm import PairRM

    path = tmp_path_factory.mktemp("pairrm")
    torch.manual_seed(0)
    model = PairRM(pairrm_config(pairrm_tokenizer)).eval()
    randomize_(model)
    model.save_pretrained(path)
    pairrm_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory) -> Path:
    """A tiny DeBERTa-v2 reward model (sequence classification, one output)."""
    from transformers import DebertaV2ForSequenceClassification

    path = tmp_path_factory.mktemp("reward")
    tok = encoder_tokenizer()
    torch.manual_seed(0)
    model = DebertaV2ForSequenceClassification(tiny_deberta_config(len(tok), num_labels=1)).eval()
    randomize_(model, seed=1)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory) -> Path:
    """A tiny Llama with the ChatML tokenizer, saved as a model directory."""
    path = tmp_path_factory.mktemp("tiny_chat")
    tiny_model("llama").save_pretrained(path)
    tiny_tokenizer(chat_template=True).save_pretrained(path)
    return path


QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Write a line.", "Now shorter."]},
    {"question_id": 2, "category": "math", "turns": ["What is 2+2?", "And 3+3?"], "reference": ["4", "6"]},
    {"question_id": 3, "category": "writing", "turns": ["Name a color.", "Another one?"]},
    {"question_id": 4, "category": "math", "turns": ["What is 1+1?", "Times two?"], "reference": ["2", "4"]},
    {"question_id": 5, "category": "stem", "turns": ["What is DyT?", "Why tanh?"]},
]


@pytest.fixture
def questions_file(tmp_path) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


def write_answers(path: Path, model_id: str, answers: dict) -> Path:
    """answers: {question_id: [turn1, turn2]} -> a FastChat answers file."""
    with path.open("w") as fh:
        for qid, turns in answers.items():
            fh.write(json.dumps({"question_id": qid, "answer_id": f"x{qid}", "model_id": model_id, "tstamp": 0.0,
                                 "choices": [{"index": 0, "turns": turns}]}) + "\n")
    return path


@pytest.fixture
def make_answers():
    """`make_answers(path, model_id, {qid: [a1, a2]})` writes a FastChat answers file."""
    return write_answers


@pytest.fixture
def questions() -> list[dict]:
    return [dict(q) for q in QUESTIONS]


@pytest.fixture
def tiny_pairrm_config(pairrm_tokenizer):
    return pairrm_config(pairrm_tokenizer)


@pytest.fixture
def randomize():
    """`randomize(model, seed)`: spread-out random weights."""
    return randomize_
