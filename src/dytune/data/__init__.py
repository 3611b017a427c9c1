"""Data: load Alpaca / ShareGPT / messages (Re-Wild) / prompt-completion / text records from files, folders
or the Hub, survive corrupt input, normalise to one message list, split by conversation, tokenize with
assistant-only labels.

    from dytune.data import load_conversations, split_train_val, tokenize_conversations
    convs, report = load_conversations("sharegpt.json", max_samples=20_000, clean=True)
    train, val = split_train_val(convs, val_fraction=0.05)
    train_tok = tokenize_conversations(train, tokenizer, max_length=2048, report=report)
    print(report.table()); report.save("out/")
"""

from dytune.data.formats import FORMATS
from dytune.data.load import load_conversations
from dytune.data.report import DataReport, SourceReport

__all__ = ["FORMATS", "DataReport", "SourceReport", "load_conversations"]
