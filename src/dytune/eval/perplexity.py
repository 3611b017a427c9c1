"""Validation loss and perplexity, on assistant tokens and on all tokens, through training's data pipeline.

The data goes through exactly what training uses (`dytune.data.DataSpec`: `load_conversations` ->
`split_train_val` -> `tokenize_conversations`), so the validation set, the chat template, truncation and
the label mask are the same, and `loss` here is training's validation loss on the same split:

    loss = sum over labelled tokens of -log p(token | prefix) / number of labelled tokens      (nats)
    perplexity = exp(loss)

Token-weighted: every labelled token counts once whatever the batch it lands in (a mean of per-batch
means would weight tokens in short batches more). `assistant` labels only the assistant turns (and their
end-of-turn marker); `all` labels every token after the first.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dytune.errors import DytuneError


@dataclass
class LossTotals:
    nll: float = 0.0  # summed negative log-likelihood, nats
    tokens: int = 0  # labelled (predicted) tokens
    examples: int = 0

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else float("nan")

    def to_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "tokens": self.tokens, "examples": self.examples}


@torch.no_grad()
def token_loss(model, dataset, *, batch_size: int = 4, pad_id: int = 0) -> LossTotals:
    """Summed next-token NLL over the labelled tokens of a tokenized dataset (input_ids, labels)."""
    device = next(model.parameters()).device
    rows = dataset.select_columns(["input_ids", "labels"]).to_dict()
    ids_all, labels_all = rows["input_ids"], rows["labels"]
    vocab = model.get_input_embeddings().weight.shape[0]
    top = max((max(ids) for ids in ids_all if ids), default=0)
    if top >= vocab:
        raise DytuneError(f"the tokenized data uses token id {top} but the model has only {vocab} embeddings: the "
                          "tokenizer gained tokens (a chat template's control tokens?) that this model was not "
                          "trained with; evaluate with the tokenizer saved next to the model")
    order = sorted(range(len(ids_all)), key=lambda i: len(ids_all[i]))  # similar lengths share a batch
    totals = LossTotals(examples=len(ids_all))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(ids_all[i]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # right padding; padded positions are masked and unlabelled
            n = len(ids_all[i])
            ids[row, :n] = torch.tensor(ids_all[i])
            labels[row, :n] = torch.tensor(labels_all[i])
            mask[row, :n] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
        target = labels[:, 1:].to(device)  # token t is predicted from positions < t
        nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                              ignore_index=-100, reduction="sum")
        totals.nll += float(nll)
        totals.tokens += int((target != -100).sum())
    return totals


def evaluate_loss(model, tokenizer, convs, *, max_length: int = 1024, chat_template: str | None = None,
                  batch_size: int = 4, cache_dir=None) -> dict:
    """`{"assistant": {...}, "all": {...}}` for one model on a conversations dataset."""
    from dytune.data import tokenize_conversations

    out = {}
    for train_on in ("assistant", "all"):
        tokens = tokenize_conversations(convs, tokenizer, max_length=max_length, train_on=train_on,
                                        chat_template=chat_template, cache_dir=cache_dir)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        out[train_on] = token_loss(model, tokens, batch_size=batch_size, pad_id=pad).to_dict()
    return out


def evaluate_models(names: list[str], spec, *, split: str = "val", batch_size: int = 4,
                    device: str | None = None, dtype: torch.dtype = torch.float32, progress: bool = True) -> dict:
    """Load the data once (DataSpec, as training does) and evaluate every model on it.

    split: "val" = the validation split training holds out (val_source, or val_fraction of source with the
    same seed); "all" = every conversation of the source (for a file that is held out already).
    """
    from dytune.models import load_model, load_tokenizer

    if split == "val":
        _, convs, report = spec.load_splits()
        if len(convs) == 0:
            raise DytuneError("the validation split is empty (val_fraction=0?): pass --split all to evaluate on "
                              "the whole data, or --val-fraction > 0")
    elif split == "all":
        convs, report = spec.load()
    else:
        raise DytuneError(f"split must be 'val' or 'all', got {split!r}")
    results = []
    for name in names:
        if progress:
            print(f"  evaluating {name} on {len(convs)} conversations", file=sys.stderr, flush=True)
        model = load_model(name, dtype=dtype, device=device)
        tokenizer = load_tokenizer(name)
        row = evaluate_loss(model, tokenizer, convs, max_length=spec.max_length, chat_template=spec.chat_template,
                            batch_size=batch_size, cache_dir=spec.cache_dir)
        results.append({"model": name, **row})
        del model
    return {"data": {"source": spec.source, "split": split, "val_fraction": spec.val_fraction,
                     "val_source": spec.val_source, "seed": spec.seed, "max_length": spec.max_length,
                     "conversations": len(convs), "max_samples": spec.max_samples},
            "models": results}


def markdown(result: dict) -> str:
    d = result["data"]
    lines = [f"Data: {d['source']} ({d['split']} split, {d['conversations']} conversations, max_length "
             f"{d['max_length']}). Loss in nats per token; perplexity = exp(loss).", "",
             "| model | examples | assistant tokens | assistant loss | assistant ppl | all tokens | all loss | all ppl |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["models"]:
        a, t = r["assistant"], r["all"]
        lines.append(f"| {r['model']} | {a['examples']} | {a['tokens']} | {a['loss']:.4f} | {a['perplexity']:.3f} | "
                     f"{t['tokens']} | {t['loss']:.4f} | {t['perplexity']:.3f} |")
    return "\n".join(lines) + "\n"
