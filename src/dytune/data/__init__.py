"""Data: load Alpaca / ShareGPT / messages (Re-Wild) / prompt-completion / text records from files, folders
or the Hub, survive corrupt input, normalise to one message list, split by conversation, tokenize with
assistant-only labels.

    from dytune.data import load_conversations, split_train_val, tokenize_conversations
    convs, report = load_conversations("sharegpt.json", max_samples=20_000, clean=True)
    train, val = split_train_val(convs, val_fraction=0.05)
    train_tok = tokenize_conversations(train, tokenizer, max_length=2048, report=report)
    print(report.table()); report.save("out/")

Modules: readers (files -> raw records), formats (record -> messages, normalisation rules), clean (ShareGPT
noise), load (sources, mixing, sampling), split, templates, tokenize, report, spec (DataSpec).
Importing this package is cheap: torch, datasets and transformers load on first use.
"""

from dytune.data.formats import FORMATS
from dytune.data.load import load_conversations
from dytune.data.report import DataReport, SourceReport
from dytune.data.spec import DataSpec
from dytune.data.split import conversation_key, split_train_val
from dytune.data.templates import DEFAULT_CHAT_TEMPLATE, resize_embeddings
from dytune.data.tokenize import tokenize_conversations

__all__ = ["DEFAULT_CHAT_TEMPLATE", "FORMATS", "DataReport", "DataSpec", "SourceReport", "conversation_key",
           "load_conversations", "resize_embeddings", "split_train_val", "tokenize_conversations"]
