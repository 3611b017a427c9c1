"""Tokenization: labels checked token by token against the rendered text, for a chat-template (ChatML)
tokenizer and a base tokenizer (default template); truncation, drops, packing, caching, templates."""

from __future__ import annotations

import json

import pytest

from dytune.data import DEFAULT_CHAT_TEMPLATE, DataReport, load_conversations, tokenize_conversations
from dytune.data import tokenize as tokmod
from dytune.errors import DytuneError

MARKED_CHATML = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _convs(rows):
    import datasets

    return datasets.Dataset.from_list([{"id": str(i), "messages": m} for i, m in enumerate(rows)])


def _expected_char_spans(text: str, messages: list[dict], header: str, end: str) -> list[tuple[int, int]]:
    """Independent oracle: each assistant turn is `header + content + end` in the rendered text."""
    spans, cursor = [], 0
    for m in messages:
        if m["role"] == "assistant":
            at = text.index(header + m["content"] + end, cursor) + len(header)
            spans.append((at, at + len(m["content"]) + len(end)))
            cursor = spans[-1][1]
    return spans


def _check_token_by_token(tok, ds, convs, header, end, template=None, add_special=False):
    for row, conv in zip(ds, convs):
        messages = conv["messages"]
        text = tok.apply_chat_template(messages, tokenize=False, chat_template=template)
        enc = tok(text, add_special_tokens=add_special, return_offsets_mapping=True)
        assert row["input_ids"] == enc["input_ids"]
        spans = _expected_char_spans(text, messages, header, end)
        for token_id, label, (s, e) in zip(row["input_ids"], row["labels"], enc["offset_mapping"]):
            inside = any(s < b and e > a for a, b in spans)
            assert label == (token_id if inside else -100), (text[s:e], spans)
        trained = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])
        assert trained == "".join(m["content"] + end for m in messages if m["role"] == "assistant")
        assert row["attention_mask"] == [1] * len(row["input_ids"])


def test_chat_template_labels_token_by_token(chat_tok, sharegpt_path):
    convs, report = load_conversations(str(sharegpt_path), max_samples=120)
    ds = tokenize_conversations(convs, chat_tok, max_length=100_000, report=report)
    assert len(ds) == 120
    _check_token_by_token(chat_tok, ds, convs, "<|im_start|>assistant\n", "<|im_end|>")
    assert report.tokenized["examples"] == 120 and report.tokenized["truncated"] == 0
    assert report.tokenized["tokens"] == sum(len(r) for r in ds["input_ids"])
    assert report.tokenized["trainable_tokens"] == sum(sum(x != -100 for x in r) for r in ds["labels"])
    assert any("prefix rendering" in n for n in report.notes)


def test_base_model_default_template_labels_token_by_token(base_tok, alpaca_path):
    convs, report = load_conversations(str(alpaca_path), max_samples=80)
    ds = tokenize_conversations(convs, base_tok, max_length=100_000, report=report)
    assert base_tok.chat_template is None and len(ds) == 80
    _check_token_by_token(base_tok, ds, convs, "### Assistant:\n", "<|endoftext|>",
                          template=DEFAULT_CHAT_TEMPLATE, add_special=False)
    eos = base_tok.eos_token_id
    for row in ds:  # every trained stretch ends with EOS
        trained = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100]
        assert trained[-1] == eos
    text = base_tok.decode(ds[0]["input_ids"])
    assert text.startswith("### User:\n") and "\n\n### Assistant:\n" in text and text.endswith("<|endoftext|>\n\n")
    assert any("chat template: default" in n for n in report.notes)


def test_generation_markers_and_prefix_rendering_agree_with_transformers(chat_tok, sharegpt_path):
    """Our prefix-rendering labels == the marked template's labels == HF's return_assistant_tokens_mask."""
    convs, _ = load_conversations(str(sharegpt_path), max_samples=60, seed=5)
    plain = tokenize_conversations(convs, chat_tok, max_length=100_000, cache_dir=False)
    marked = tokenize_conversations(convs, chat_tok, max_length=100_000, cache_dir=False,
                                    chat_template=MARKED_CHATML)
    assert plain["input_ids"] == marked["input_ids"] and plain["labels"] == marked["labels"]
    for conv, row in zip(convs, marked):
        hf = chat_tok.apply_chat_template(conv["messages"], chat_template=MARKED_CHATML, return_dict=True,
                                          return_assistant_tokens_mask=True)
        assert row["labels"] == [t if m else -100 for t, m in zip(hf["input_ids"], hf["assistant_masks"])]


def test_train_on_all_and_plain_text_documents(chat_tok, base_tok):
    convs = _convs([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                    [{"role": "assistant", "content": "A plain document."}]])
    ds = tokenize_conversations(convs, chat_tok, max_length=512, train_on="all", cache_dir=False)
    assert all(row["labels"] == row["input_ids"] for row in ds)
    docs = tokenize_conversations(convs.select([1]), base_tok, max_length=512, cache_dir=False)
    ids = docs[0]["input_ids"]
    assert base_tok.decode(ids) == "A plain document.<|endoftext|>" and docs[0]["labels"] == ids
    with pytest.raises(DytuneError, match="train_on must be"):
        tokenize_conversations(convs, chat_tok, train_on="assistant_only")


def test_truncation_and_examples_without_trainable_tokens(chat_tok):
    long_question = "What is the capital of France? " * 20
    rows = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, friend."}],
            [{"role": "user", "content": long_question}, {"role": "assistant", "content": "Paris."}],
            [{"role": "user", "content": "Short"}, {"role": "assistant", "content": "The quick brown fox " * 20}]]
    convs = _convs(rows)
    report = DataReport(selected=3)
    ds = tokenize_conversations(convs, chat_tok, max_length=40, report=report, cache_dir=False)
    full = tokenize_conversations(convs, chat_tok, max_length=100_000, cache_dir=False)
    # the long question fills all 40 tokens before the answer starts: dropped and counted
    assert list(ds["input_ids"]) == [full[0]["input_ids"][:40], full[2]["input_ids"][:40]]
    assert list(ds["labels"]) == [full[0]["labels"][:40], full[2]["labels"][:40]]
    assert report.token_dropped == {"no_trainable_tokens": 1} and report.kept == 2
    assert report.dropped == {"no_trainable_tokens": 1}
    assert report.tokenized["truncated"] == 1  # the third one (the first fits)
    with pytest.raises(DytuneError, match="no example is left"):
        tokenize_conversations(convs.select([1]), chat_tok, max_length=40, cache_dir=False)


def test_long_texts_are_cut_at_special_tokens_without_changing_tokens(chat_tok, sharegpt_path, monkeypatch):
    """Tokenizing only up to a special token past max_length gives the same first tokens."""
    convs, _ = load_conversations(str(sharegpt_path))
    monkeypatch.setattr(tokmod, "CHARS_PER_TOKEN_BOUND", 1)  # cut as early as allowed: the check is the redo
    full = tokenize_conversations(convs, chat_tok, max_length=100_000, cache_dir=False)
    for max_length, train_on in ((24, "all"), (200, "assistant")):
        short = tokenize_conversations(convs, chat_tok, max_length=max_length, train_on=train_on, cache_dir=False)
        expected = [(ids[:max_length], (ids if train_on == "all" else lab)[:max_length])
                    for ids, lab in zip(full["input_ids"], full["labels"])]
        expected = [e for e in expected if any(x != -100 for x in e[1])]
        assert list(zip(short["input_ids"], short["labels"])) == expected
        assert len(short) > 400


def test_template_errors_are_dropped_and_counted(chat_tok):
    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
              "supported') }}{% endif %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}")
    convs = _convs([[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                    [{"role": "system", "content": "s"}, {"role": "user", "content": "a"},
                     {"role": "assistant", "content": "b"}]])
    report = DataReport(selected=2)
    ds = tokenize_conversations(convs, chat_tok, chat_template=strict, report=report, cache_dir=False)
    assert len(ds) == 1 and report.token_dropped == {"template_error": 1}
    assert any("System role not supported" in n for n in report.notes)


def test_template_that_rewrites_earlier_turns_falls_back_to_locating_them(chat_tok):
    # the header counts the turns, so a prefix rendering is never a prefix of the whole
    counting = ("{{ messages | length }} turns\n{% for m in messages %}{{ m['role'] + ': ' + m['content'] + "
                "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    convs = _convs([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                     {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "See you"}]])
    row = tokenize_conversations(convs, chat_tok, chat_template=counting, cache_dir=False)[0]
    trained = chat_tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100])
    assert trained == "Hello<|im_end|>See you<|im_end|>"


def test_user_template_from_file_string_and_default(chat_tok, tmp_path):
    convs = _convs([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]])
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    from_file = tokenize_conversations(convs, chat_tok, chat_template=str(path), cache_dir=False)
    from_str = tokenize_conversations(convs, chat_tok, chat_template=path.read_text(), cache_dir=False)
    assert chat_tok.decode(from_file[0]["input_ids"]) == "[user] Hi\n[assistant] Yo\n"
    assert from_file["labels"] == from_str["labels"]
    assert chat_tok.decode([t for t, lab in zip(from_file[0]["input_ids"], from_file[0]["labels"])
                            if lab != -100]) == "Yo"
    default = tokenize_conversations(convs, chat_tok, chat_template="default", cache_dir=False)
    assert chat_tok.decode(default[0]["input_ids"]).startswith("### User:\nHi")
    with pytest.raises(DytuneError, match="neither a file nor a Jinja template"):
        tokenize_conversations(convs, chat_tok, chat_template="no/such/template.jinja")


def test_template_needing_new_special_tokens(base_tok):
    from dytune.data import resize_embeddings
    from dytune.testing import tiny_model

    chatml = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
              "{% endfor %}")
    convs = _convs([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]])
    before = len(base_tok)
    report = DataReport(selected=1)
    ds = tokenize_conversations(convs, base_tok, chat_template=chatml, report=report, cache_dir=False)
    assert len(base_tok) == before + 2
    start, end = base_tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ds[0]["input_ids"].count(start) == 2 and ds[0]["input_ids"].count(end) == 2
    assert any("added ['<|im_start|>', '<|im_end|>']" in n and "resize" in n.lower() for n in report.notes)
    model = tiny_model("gpt2")
    names = resize_embeddings(model, base_tok)
    assert model.get_input_embeddings().weight.shape[0] == len(base_tok)
    assert set(names) == {"transformer.wte", "lm_head"}


def test_packing(chat_tok, sharegpt_path):
    convs, _ = load_conversations(str(sharegpt_path), max_samples=100)
    plain = tokenize_conversations(convs, chat_tok, max_length=256, cache_dir=False)
    report = DataReport()
    packed = tokenize_conversations(convs, chat_tok, max_length=256, packing=True, cache_dir=False, report=report)
    assert len(packed) < len(plain) and report.tokenized["packed_sequences"] == len(packed)
    assert sum(map(len, packed["input_ids"])) == sum(map(len, plain["input_ids"]))
    assert sum(sum(x != -100 for x in r) for r in packed["labels"]) == \
        sum(sum(x != -100 for x in r) for r in plain["labels"])
    for row in packed:
        assert len(row["input_ids"]) <= 256 and sum(row["seq_lengths"]) == len(row["input_ids"])
        assert row["position_ids"] == [p for n in row["seq_lengths"] for p in range(n)]
        assert row["attention_mask"] == [1] * len(row["input_ids"])


def test_cache_skips_retokenizing(chat_tok, sharegpt_path, tmp_path, monkeypatch):
    convs, _ = load_conversations(str(sharegpt_path), max_samples=50)
    first_report = DataReport(selected=50)
    first = tokenize_conversations(convs, chat_tok, max_length=128, cache_dir=tmp_path / "c", report=first_report)

    def boom(self, batch):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(tokmod._Encoder, "__call__", boom)
    again_report = DataReport(selected=50)
    again = tokenize_conversations(convs, chat_tok, max_length=128, cache_dir=tmp_path / "c", report=again_report)
    assert again["input_ids"] == first["input_ids"] and again["labels"] == first["labels"]
    assert again_report.tokenized == first_report.tokenized
    assert any("loaded from cache" in n for n in again_report.notes)
    with pytest.raises(AssertionError, match="tokenized again"):  # other options: a different entry
        tokenize_conversations(convs, chat_tok, max_length=64, cache_dir=tmp_path / "c")
    with pytest.raises(AssertionError, match="tokenized again"):  # other conversations: a different entry
        tokenize_conversations(convs.select(range(49)), chat_tok, max_length=128, cache_dir=tmp_path / "c")
    # the same conversations read from another file are the same content: a hit
    copy_path = tmp_path / "copy.json"
    copy_path.write_text(sharegpt_path.read_text())
    same, _ = load_conversations(str(copy_path), max_samples=50)
    assert tokenize_conversations(same, chat_tok, max_length=128, cache_dir=tmp_path / "c")["labels"] == \
        first["labels"]


def test_num_proc_gives_the_same_result(chat_tok, sharegpt_path):
    convs, _ = load_conversations(str(sharegpt_path), max_samples=200)
    one = tokenize_conversations(convs, chat_tok, max_length=128, cache_dir=False)
    two = tokenize_conversations(convs, chat_tok, max_length=128, cache_dir=False, num_proc=2)
    assert one["input_ids"] == two["input_ids"] and one["labels"] == two["labels"]


def test_bad_inputs(chat_tok):
    import datasets

    with pytest.raises(DytuneError, match="'messages' column"):
        tokenize_conversations(datasets.Dataset.from_list([{"text": "x"}]), chat_tok)
    with pytest.raises(DytuneError, match="max_length must be at least 2"):
        tokenize_conversations(_convs([[{"role": "user", "content": "a"}]]), chat_tok, max_length=1)
    assert json.dumps(DataReport().to_dict())  # serialisable when empty
