"""What the original DyT study's configs need from the data pipeline: its plain concatenation templates (loss on
every token, EOS masked as a pad = EOS collator does), ShareGPT first turns, MMLU rows and its answer bug, and
sources with settings of their own (seeded row selection as `datasets` does it)."""

from __future__ import annotations

import json

import pytest

from dytune.data import DataSpec, load_conversations, tokenize_conversations
from dytune.errors import DytuneError


def _convs(rows):
    import datasets

    return datasets.Dataset.from_list([{"id": str(i), "messages": m} for i, m in enumerate(rows)])


def _pair(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


@pytest.mark.parametrize("mask_eos", [False, True])
def test_concat_template_is_the_study_text_with_every_token_labelled(base_tok, mask_eos):
    rows = [_pair("Give three tips for staying healthy.", "Eat a balanced diet, exercise, and sleep well."),
            _pair("What is the capital of France?", "The capital of France is Paris.")]
    ds = tokenize_conversations(_convs(rows), base_tok, chat_template="concat", train_on="all", mask_eos=mask_eos,
                                max_length=256, cache_dir=False)
    eos = base_tok.eos_token_id
    for row, (user, assistant) in zip(ds, rows):
        # the study's text: prompt + "\n\n" + response, then the EOS the template adds
        expected = base_tok(user["content"] + "\n\n" + assistant["content"], add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == expected + [eos]
        if mask_eos:  # DataCollatorForLanguageModeling with pad = EOS: every EOS out of the loss, all else in
            assert row["labels"] == expected + [-100]
        else:
            assert row["labels"] == row["input_ids"]


def test_mask_eos_masks_every_eos_token_as_the_collator_did(base_tok):
    """The study's collator masked by id, so an EOS written inside the text is masked too."""
    rows = [_pair("one<|endoftext|>two", "three")]
    ds = tokenize_conversations(_convs(rows), base_tok, chat_template="concat", train_on="all", mask_eos=True,
                                max_length=64, cache_dir=False)
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    eos = base_tok.eos_token_id
    assert ids.count(eos) == 2
    assert [lab for t, lab in zip(ids, labels) if t == eos] == [-100, -100]
    assert all(lab == t for t, lab in zip(ids, labels) if t != eos)
    kept = tokenize_conversations(_convs(rows), base_tok, chat_template="concat", train_on="all", max_length=64,
                                  cache_dir=False)
    assert kept[0]["labels"] == ids  # mask_eos off: nothing masked


def test_prompt_completion_template_is_trls_text_and_loss(base_tok):
    """TRL 0.17's SFTTrainer on prompt/completion columns (the study's Pythia notebooks), redone here: completion +=
    EOS; input_ids = tokenizer(prompt + completion); labels = completion tokens only (completion_only_loss)."""
    prompt, completion = "What is 2 + 2?", "The answer is 4."
    ds = tokenize_conversations(_convs([_pair(prompt, completion)]), base_tok, chat_template="prompt-completion",
                                max_length=64, cache_dir=False)
    prompt_ids = base_tok(prompt)["input_ids"]
    trl_ids = base_tok(prompt + completion + base_tok.eos_token)["input_ids"]
    trl_labels = [-100] * len(prompt_ids) + trl_ids[len(prompt_ids):]
    assert ds[0]["input_ids"] == trl_ids and ds[0]["labels"] == trl_labels


def test_named_templates_render_generation_prompts(base_tok):
    from dytune.data.templates import NAMED_TEMPLATES, resolve_template

    two = _pair("Hi", "Hello") + [{"role": "user", "content": "More?"}]
    concat = base_tok.apply_chat_template(two, chat_template=NAMED_TEMPLATES["concat"], tokenize=False,
                                          add_generation_prompt=True)
    assert concat == "Hi\n\nHello<|endoftext|>\n\nMore?\n\n"
    assert resolve_template(base_tok, "prompt-completion")[1] == "prompt-completion"
    with pytest.raises(DytuneError, match="concat, prompt-completion"):
        resolve_template(base_tok, "no-such-template")


def _sharegpt_file(tmp_path):
    rows = [
        {"id": "a", "conversations": [{"from": "system", "value": "Be nice."}, {"from": "human", "value": "Q1"},
                                      {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"},
                                      {"from": "gpt", "value": "A2"}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "leading"}, {"from": "human", "value": ""},
                                      {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "Q"}, {"from": "bing", "value": "B"}]},
        {"id": "d", "conversations": [{"from": "human", "value": "alone"}]},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(rows))
    return path, rows


def study_first_turns(rows):
    """The study's rule (notebooks/train_sharegpt.ipynb, preprocess_single), copied."""
    out = {}
    for example in rows:
        user_message = assistant_message = ""
        for turn in example.get("conversations", []):
            if turn.get("from") == "human" and not user_message:
                user_message = turn.get("value", "")
            elif turn.get("from") == "gpt" and not assistant_message:
                assistant_message = turn.get("value", "")
        if user_message and assistant_message:
            out[example["id"]] = (user_message.strip(), assistant_message.strip())
    return out


def test_sharegpt_first_turns_keep_one_user_and_one_assistant_turn(tmp_path):
    path, rows = _sharegpt_file(tmp_path)
    role_map = {"user": None, "chatgpt": None, "bing": None, "bard": None}  # as configs/study/*sharegpt*.yaml
    convs, report = load_conversations(str(path), turns="first", role_map=role_map)
    got = {cid: [(m["role"], m["content"]) for m in msgs] for cid, msgs in zip(convs["id"], convs["messages"])}
    assert all([r for r, _ in msgs] == ["user", "assistant"] for msgs in got.values())
    # b: the study paired the first human turn with the first gpt turn even when that reply came before it (a
    # ShareGPT chunk that continues an earlier chunk), and so does turns: first
    assert {cid: (m[0][1], m[1][1]) for cid, m in got.items()} == study_first_turns(rows) == {
        "a": ("Q1", "A1"), "b": ("Q", "leading")}
    assert report.sources[0].dropped["no_assistant_reply"] == 2  # c (only "bing" answered), d
    everything, _ = load_conversations(str(path))
    assert len(everything["messages"][0]) == 5  # without turns: first, the whole conversation


def test_turns_first_reaches_the_loader_from_a_data_spec(tmp_path):
    path, _ = _sharegpt_file(tmp_path)
    convs, _ = DataSpec(source=str(path), turns="first").load()
    assert max(len(m) for m in convs["messages"]) == 2
    with pytest.raises(DytuneError, match="data.turns must be one of all, first"):
        DataSpec(source=str(path), turns="last")


def _mmlu_rows(nested: bool):
    rows = [{"question": f"Question {i}?", "choices": [f"c{i}{k}" for k in "ABCD"], "answer": i % 4,
             "subject": ""} for i in range(8)]
    return [{"train": r} for r in rows] if nested else rows


@pytest.mark.parametrize("nested", [True, False])
def test_mmlu_rows_answer_correctly_unless_the_study_bug_is_asked_for(tmp_path, nested):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mmlu.parquet"
    pq.write_table(pa.Table.from_pylist(_mmlu_rows(nested)), path)  # cais/mmlu auxiliary_train nests under `train`
    fixed, report = load_conversations(str(path))
    assert report.sources[0].format == "multiple_choice"
    answers = [m[1]["content"] for m in fixed["messages"]]
    assert answers == [f"c{i}{'ABCD'[i % 4]}" for i in range(8)]
    assert [m[0]["content"] for m in fixed["messages"]] == [f"Question {i}?" for i in range(8)]
    buggy, _ = load_conversations(str(path), mmlu_answer_bug=True)
    # the notebook's choices[answer - 1]: answer 0 wraps to the last choice, every answer is wrong
    assert [m[1]["content"] for m in buggy["messages"]] == [f"c{i}{'ABCD'[(i % 4) - 1]}" for i in range(8)]


def test_mmlu_letter_answers_and_bad_rows(tmp_path):
    path = tmp_path / "mc.jsonl"
    rows = [{"question": "Q?", "choices": ["x", "y"], "answer": "B"},
            {"question": "Q?", "choices": ["x", "y"], "answer": 5},
            {"question": "Q?", "choices": "x", "answer": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    convs, report = load_conversations(str(path), format="mmlu")
    assert [m[1]["content"] for m in convs["messages"]] == ["y"]
    assert report.sources[0].dropped["wrong_type"] == 2


def test_source_mappings_carry_their_own_settings(tmp_path):
    path, _ = _sharegpt_file(tmp_path)
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps(r) + "\n" for r in _mmlu_rows(False)))
    convs, report = load_conversations([{"source": str(path), "turns": "first", "role_map": {"bing": None}},
                                        {"source": str(mc), "format": "multiple_choice", "take": 3}])
    assert [s.format for s in report.sources] == ["sharegpt", "multiple_choice"]
    assert len(convs) == 2 + 3 and max(len(m) for m in convs["messages"]) == 2
    with pytest.raises(DytuneError, match="unknown setting"):
        load_conversations([{"source": str(path), "shuffle": 1}])
    with pytest.raises(DytuneError, match="has no `source:`"):
        load_conversations([{"take": 3}])
    with pytest.raises(DytuneError, match="take of .* at least 1"):
        load_conversations([{"source": str(path), "take": 0}])


@pytest.mark.parametrize("as_disk", [False, True])
def test_seeded_selection_picks_the_rows_datasets_shuffle_picks(tmp_path, as_disk):
    """`shuffle_seed` + `skip`/`take` on a local file (NumPy) or a saved dataset (`datasets`) equals
    `Dataset.shuffle(seed=).select(range(skip, skip + take))`, as the study's `q72.shuffle(seed=42)` did."""
    import datasets

    rows = [{"id": f"r{i}", "messages": _pair(f"question {i}", f"answer {i}")} for i in range(50)]
    ds = datasets.Dataset.from_list(rows)
    if as_disk:
        ds.save_to_disk(str(tmp_path / "disk"))
        source = str(tmp_path / "disk")
    else:
        (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        source = str(tmp_path / "rows.jsonl")
    expected = ds.shuffle(seed=42).select(range(5, 17))["id"]
    convs, report = load_conversations([{"source": source, "shuffle_seed": 42, "skip": 5, "take": 12}])
    assert convs["id"] == expected
    assert any("shuffled with seed 42, kept rows 5 to 17" in n for n in report.notes)
    first, _ = load_conversations([{"source": source, "take": 4}])
    assert first["id"] == ["r0", "r1", "r2", "r3"]


def test_data_cli_shows_the_study_examples(tmp_path, capsys):
    from dytune.cli import main
    from dytune.testing import tiny_model, tiny_tokenizer

    path, _ = _sharegpt_file(tmp_path)
    tiny_model("gpt2").save_pretrained(tmp_path / "tok")
    tiny_tokenizer(chat_template=False).save_pretrained(tmp_path / "tok")
    assert main(["data", str(path), "--turns", "first", "--role-map", "bing=", "--tokenizer", str(tmp_path / "tok"),
                 "--chat-template", "concat", "--train-on", "all", "--mask-eos", "--no-cache", "--show", "1",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "«Q1\n\nA1»<|endoftext|>" in out  # every token trained but the EOS


def test_rows_split_is_the_notebooks_train_test_split(tmp_path):
    """`val_method: rows` holds out the rows `Dataset.train_test_split(test_size=0.05, seed=42)` holds out, as the
    study's Alpaca and RE-WILD notebooks split; the default keeps whole conversations together instead."""
    import datasets

    rows = [{"id": f"c{i}", "messages": _pair(f"question {i}", f"answer {i}")} for i in range(200)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DataSpec(source=str(tmp_path / "rows.jsonl"), val_fraction=0.05, val_method="rows", seed=42)
    train, val, _ = spec.load_splits()
    study = datasets.Dataset.from_list(rows).train_test_split(test_size=0.05, seed=42)
    assert val["id"] == study["test"]["id"] and train["id"] == study["train"]["id"]
    _, grouped, _ = DataSpec(source=str(tmp_path / "rows.jsonl"), val_fraction=0.05, seed=42).load_splits()
    assert len(grouped) == 10 and set(grouped["id"]) != set(val["id"])
    with pytest.raises(DytuneError, match="val_method must be one of conversation, rows"):
        DataSpec(source="x", val_method="random")
