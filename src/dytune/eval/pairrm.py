"""PairRM, the pairwise reward model the DyT study judged with, ported onto `transformers`' DeBERTa-v2 classes.

Why a port: PairRM's own code (`llm-blender`) does not import on transformers 5 (`cannot import name
'TRANSFORMERS_CACHE'`), and TRL 1.16 removed its `judges` module that wrapped it. The model itself is small:
`DebertaV2Model` (DeBERTa-v3-large, ~0.4B) plus a two-layer head that reads the encoder's states at the
`<|source|>`, `<|candidate1|>` and `<|candidate2|>` prefix tokens. This module keeps the attribute names of
`llm_blender.pair_ranker.pairrm.DebertaV2PairRM` (`pretrained_model`, `head_layer`), so the
`llm-blender/PairRM-hf` checkpoint loads unchanged, and tokenizes exactly as PairRM-hf's model card does
(`tokenize_pair`). `tests/eval/test_eval_pairrm.py` checks the port against llm-blender's own class.

    logit = mean_tasks(head([h_source; h_cand1]) - head([h_source; h_cand2]))    # > 0: candidate 1 better
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Model, DebertaV2PreTrainedModel

PAIRRM_HUB_ID = "llm-blender/PairRM-hf"
SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX = "<|source|>", "<|candidate1|>", "<|candidate2|>"
# PairRM-hf's model card: 1224 source tokens + 2 x 412 candidate tokens = 2048; a candidate gets
# (2048 - source length) // 2 tokens, so 412 when the source is at its maximum.
SOURCE_MAX_LENGTH, CANDIDATE_MAX_LENGTH = 1224, 412


class PairRM(DebertaV2PreTrainedModel):
    """DeBERTa-v2 encoder + PairRM's comparison head; `forward` returns one logit per pair."""

    def __init__(self, config) -> None:
        super().__init__(config)
        hidden = config.hidden_size
        dropout = getattr(config, "drop_out", 0.05)
        self.pretrained_model = DebertaV2Model(config)
        self.head_layer = nn.Sequential(  # indices 1 and 4 hold weights, as in the checkpoint
            nn.Dropout(dropout), nn.Linear(2 * hidden, hidden), nn.Tanh(), nn.Dropout(dropout),
            nn.Linear(hidden, getattr(config, "n_tasks", 1)),
        )
        self.post_init()

    def _prefix_ids(self) -> tuple[int, int, int]:
        cfg = self.config
        return cfg.source_prefix_id, cfg.cand1_prefix_id, cfg.cand2_prefix_id

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = attention_mask.ne(0).any(dim=0)  # drop all-padding columns, as the reference does
        input_ids, attention_mask = input_ids[:, keep], attention_mask[:, keep]
        states = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        picked = []
        for prefix_id in self._prefix_ids():
            hits = input_ids == prefix_id  # (B, T)
            if not bool(hits.any(dim=1).all()):
                raise ValueError(f"every sequence must contain prefix token id {prefix_id}; tokenize with "
                                 "`tokenize_pair`")
            picked.append(states[rows, hits.int().argmax(dim=1)])  # (B, H) at the first occurrence
        source, cand1, cand2 = picked
        left = self.head_layer(torch.cat([source, cand1], dim=-1))  # (B, n_tasks)
        right = self.head_layer(torch.cat([source, cand2], dim=-1))
        return (left - right).mean(dim=-1)  # (B,)


def _clean(text: str) -> str:
    # a literal prefix token inside an answer would be read as a position marker
    for marker in (SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX):
        text = text.replace(marker, "")
    return text


def tokenize_pair(tokenizer, sources: list[str], candidate1s: list[str], candidate2s: list[str],
                  source_max_length: int = SOURCE_MAX_LENGTH,
                  candidate_max_length: int = CANDIDATE_MAX_LENGTH) -> dict[str, torch.Tensor]:
    """PairRM-hf's input encoding: `[CLS]<|source|>src[SEP][CLS]<|candidate1|>a[SEP][CLS]<|candidate2|>b[SEP]`,
    each part truncated, padded to the longest sequence (the model drops all-padding columns anyway)."""
    max_length = source_max_length + 2 * candidate_max_length
    ids = []
    for source, cand1, cand2 in zip(sources, candidate1s, candidate2s, strict=True):
        source_ids = tokenizer.encode(SOURCE_PREFIX + _clean(source), max_length=source_max_length, truncation=True)
        cand_len = (max_length - len(source_ids)) // 2
        cand1_ids = tokenizer.encode(CAND1_PREFIX + _clean(cand1), max_length=cand_len, truncation=True)
        cand2_ids = tokenizer.encode(CAND2_PREFIX + _clean(cand2), max_length=cand_len, truncation=True)
        ids.append(source_ids + cand1_ids + cand2_ids)
    return tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding="longest")


def conversation_pair(questions: list[str], answers_a: list[str], answers_b: list[str]) -> tuple[str, str, str]:
    """(source, candidate A, candidate B) for comparing the last turn of two conversations.

    One turn: the question is the source, the answers are the candidates (PairRM's training format).
    Several turns: PairRM was trained on single turns, so the conversation so far goes in the source in
    llm-blender's own multi-turn format (`Blender.compare_conversations`): the user turns with
    `<Response i>` placeholders, and each candidate lists its model's responses 1..k. The judge thus sees
    each model's turn-2 answer next to its own turn-1 answer, as FastChat's multi-turn judge does.
    """
    if len(questions) == 1:
        return questions[0], answers_a[0], answers_b[0]
    source = "Finish the following coversation in each i-th turn by filling in <Response i> with your response." + \
        "\n".join(f"USER: {q}\nAssistant: <Response {i}>" for i, q in enumerate(questions, 1))

    def cand(answers):
        return "\n".join(f"<Response {i}>: {a}" for i, a in enumerate(answers, 1))

    return source, cand(answers_a), cand(answers_b)


class PairRMJudge:
    """Pairwise judge: `compare(sources, a, b)` -> logits, > 0 when the first candidate is better."""

    pairwise = True

    def __init__(self, name: str = PAIRRM_HUB_ID, *, device: str | None = None, batch_size: int = 4,
                 dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoTokenizer

        from dytune.errors import DytuneError
        from dytune.models import local_path

        try:
            location, kwargs = local_path(name)  # a directory, or a Hub id: its cached copy or a download
        except DytuneError as err:
            if "cannot be reached" not in str(err):
                raise
            raise DytuneError(
                f"the PairRM judge {name!r} is not in the local Hugging Face cache and the Hub cannot be reached. "
                f"Download it where you have internet (`hf download {name}`) and copy ~/.cache/huggingface here, "
                "or pass --judge PATH (a local PairRM-hf copy or a sequence-classification reward model) or "
                "--judge openai:MODEL") from None
        self.name = "pairrm" if name == PAIRRM_HUB_ID else f"pairrm:{name}"
        self.tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        self.model = PairRM.from_pretrained(location, dtype=dtype, **kwargs).eval()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device)
        self.batch_size = batch_size

    @torch.no_grad()
    def compare(self, sources: list[str], cands1: list[str], cands2: list[str]) -> list[float]:
        logits: list[float] = []
        for i in range(0, len(sources), self.batch_size):
            enc = tokenize_pair(self.tokenizer, sources[i:i + self.batch_size], cands1[i:i + self.batch_size],
                                cands2[i:i + self.batch_size])
            out = self.model(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
            logits.extend(out.float().cpu().tolist())
        return logits
