"""Each format from the real samples, the Re-Wild schema, field/role maps and the normalisation rules."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from dytune.data import load_conversations
from dytune.data.formats import Drop, normalise_turns, record_turns, resolve_fields, resolve_roles
from dytune.errors import DytuneError


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_alpaca_sample_every_record(alpaca_path):
    raw = json.loads(alpaca_path.read_text())
    convs, report = load_conversations(str(alpaca_path))
    assert report.sources[0].format == "alpaca"
    assert (report.read, report.kept, report.dropped) == (800, 800, {})
    with_input = 0
    for record, row in zip(raw, convs):
        user, assistant = row["messages"]
        expected = record["instruction"].strip()
        if record["input"].strip():
            expected = (record["instruction"] + "\n\n" + record["input"].strip()).strip()
            with_input += 1
        assert user == {"role": "user", "content": expected}
        assert assistant == {"role": "assistant", "content": record["output"].strip()}
    assert 250 < with_input < 400  # README: about 40% have an input
    assert convs[0]["id"] == "alpaca_sample-0" and convs[799]["id"] == "alpaca_sample-799"


def test_sharegpt_sample_roles_and_turns(sharegpt_path):
    raw = json.loads(sharegpt_path.read_text())
    convs, report = load_conversations(str(sharegpt_path))
    assert report.sources[0].format == "sharegpt"
    assert report.kept == 500 and report.turns == 2000
    assert convs["id"] == [r["id"] for r in raw]
    roles = {"human": "user", "gpt": "assistant"}
    for record, row in zip(raw, convs):
        assert row["messages"] == [{"role": roles[t["from"]], "content": t["value"].strip()}
                                   for t in record["conversations"]]


def test_rewild_schema_from_parquet(rewild_parquet, rewild_rows):
    convs, report = load_conversations(str(rewild_parquet))
    src = report.sources[0]
    assert src.format == "messages"
    # 12 answered conversations; the one with an empty answer has nothing to learn from
    assert (src.read, src.kept, dict(src.dropped)) == (13, 12, {"no_assistant_reply": 1})
    assert src.fixes["empty_turns_removed"] == 1
    assert convs[0]["id"] == rewild_rows[0]["conversation_hash"]
    assert convs[0]["messages"] == [{"role": "user", "content": "Question 0: what is 0 + 0?"},
                                    {"role": "assistant", "content": "0 + 0 = 0."},
                                    {"role": "user", "content": "Explain it to a child."},
                                    {"role": "assistant", "content": "Count the apples in both hands together."}]
    assert set(convs[0]["messages"][1]) == {"role", "content"}  # finish_reason, toxic, hashed_ip are gone


def test_format_override_and_aliases(tmp_path, rewild_rows):
    path = _jsonl(tmp_path / "rw.jsonl", rewild_rows[:3])
    for name in ("rewild", "openai", "messages"):
        convs, report = load_conversations(str(path), format=name)
        assert report.sources[0].format == "messages" and len(convs) == 3
    with pytest.raises(DytuneError, match="unknown data format 'vicuna'"):
        load_conversations(str(path), format="vicuna")
    # forcing the wrong format drops every record with the reason, then fails clearly
    with pytest.raises(DytuneError, match=r"no usable conversation in 3 records.*missing_field: 3"):
        load_conversations(str(path), format="alpaca")


def test_prompt_completion_text_and_openai_parts(tmp_path):
    pc = _jsonl(tmp_path / "pc.jsonl", [
        {"prompt": "2+2?", "completion": "4"},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         "completion": [{"role": "assistant", "content": "Hello."}]},
    ])
    convs, report = load_conversations(str(pc))
    assert report.sources[0].format == "prompt_completion"
    assert convs[0]["messages"] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert [m["role"] for m in convs[1]["messages"]] == ["system", "user", "assistant"]

    text = _jsonl(tmp_path / "t.jsonl", [{"text": "  A plain document.  "}, {"text": ""}])
    convs, report = load_conversations(str(text))
    assert convs[0]["messages"] == [{"role": "assistant", "content": "A plain document."}]
    assert report.dropped == {"empty_conversation": 1}

    parts = _jsonl(tmp_path / "o.jsonl", [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "text", "text": "x"}]},
                      {"role": "assistant", "content": "Seen."}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}}]},
                      {"role": "assistant", "content": "A cat."}]},
    ])
    convs, report = load_conversations(str(parts))
    assert convs[0]["messages"][0]["content"] == "Look: x"
    assert report.dropped == {"non_text_content": 1}


def test_detection_uses_the_majority_not_the_first_record(tmp_path):
    rows = [{"text": "odd one out"}] + [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(5)]
    convs, report = load_conversations(str(_jsonl(tmp_path / "mix.jsonl", rows)))
    assert report.sources[0].format == "alpaca"
    assert len(convs) == 5 and report.dropped == {"missing_field": 1}


def test_unknown_format_lists_the_fields(mtbench_path):
    with pytest.raises(DytuneError) as err:
        load_conversations(str(mtbench_path))
    assert "question_id, category, turns" in str(err.value) and "field_map" in str(err.value)


def test_field_maps_in_our_llama_factory_and_axolotl_spelling(tmp_path):
    rows = [{"dialog": [{"speaker": "Q", "text": "hi"}, {"speaker": "A", "text": "hello"}], "key": "k1"}]
    path = _jsonl(tmp_path / "custom.jsonl", rows)
    expected = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ours = load_conversations(str(path), "sharegpt", field_map={"messages": "dialog", "role": "speaker",
                                                                 "content": "text", "id": "key"},
                              role_map={"Q": "user", "A": "assistant"})[0]
    assert ours[0] == {"id": "k1", "messages": expected}
    # LLaMA-Factory dataset_info.json: columns + tags
    lf = load_conversations(str(path), "sharegpt", field_map={
        "messages": "dialog", "role_tag": "speaker", "content_tag": "text", "user_tag": "Q", "assistant_tag": "A"})[0]
    assert lf[0]["messages"] == expected
    # axolotl: field_messages + message_property_mappings + roles {role: [names]}
    ax = load_conversations(str(path), "messages", field_map={
        "field_messages": "dialog", "message_property_mappings": {"role": "speaker", "content": "text"}},
        role_map={"user": ["Q"], "assistant": ["A"]})[0]
    assert ax[0]["messages"] == expected
    # LLaMA-Factory alpaca columns: prompt/query/response mean instruction/input/output
    alp = _jsonl(tmp_path / "a.jsonl", [{"q": "Translate", "ctx": "chat", "ans": "Katze"}])
    conv = load_conversations(str(alp), "alpaca", field_map={"prompt": "q", "query": "ctx", "response": "ans"})[0]
    assert conv[0]["messages"][0]["content"] == "Translate\n\nchat"
    with pytest.raises(DytuneError, match="field_map key 'dialogue'"):
        resolve_fields({"dialogue": "x"})
    with pytest.raises(DytuneError, match="a role must be user, assistant or system"):
        resolve_roles({"bot": "robot"})


def test_roles_normalise_case_insensitively_and_unknown_roles_drop():
    roles = resolve_roles(None)
    fixes: Counter = Counter()
    turns = record_turns({"conversations": [
        {"from": "Human", "value": "a"}, {"from": "chatgpt", "value": "b"}, {"from": "USER", "value": "c"},
        {"from": "bing", "value": "d"}, {"from": "user", "value": "e"}, {"from": "bard", "value": "f"}]},
        "sharegpt", {}, roles, fixes)
    assert [r for r, _ in turns] == ["user", "assistant"] * 3
    with pytest.raises(Drop) as drop:
        record_turns({"conversations": [{"from": "tool", "value": "x"}]}, "sharegpt", {}, roles, fixes)
    assert drop.value.reason == "unknown_role" and "'tool'" in drop.value.detail
    # role_map None removes such turns instead
    turns = record_turns({"conversations": [{"from": "human", "value": "a"}, {"from": "tool", "value": "x"},
                                            {"from": "gpt", "value": "b"}]},
                         "sharegpt", {}, resolve_roles({"tool": None}), fixes)
    assert turns == [("user", "a"), ("assistant", "b")] and fixes["role_map_removed"] == 1


@pytest.mark.parametrize("turns, expected, fixes", [
    # empty turns are removed (and the neighbours they separated merge)
    ([("user", "q"), ("assistant", "  "), ("user", "q2"), ("assistant", "a")],
     [("user", "q\n\nq2"), ("assistant", "a")], {"empty_turns_removed": 1, "merged_turns": 1}),
    # consecutive turns of one speaker merge with a blank line
    ([("user", "a"), ("user", "b"), ("assistant", "c"), ("assistant", "d")],
     [("user", "a\n\nb"), ("assistant", "c\n\nd")], {"merged_turns": 2}),
    # a conversation that starts with the assistant loses those turns (the system prompt stays)
    ([("system", "s"), ("assistant", "hi"), ("user", "q"), ("assistant", "a")],
     [("system", "s"), ("user", "q"), ("assistant", "a")], {"leading_assistant_dropped": 1}),
    # one that does not end with the assistant loses the trailing turns
    ([("user", "q"), ("assistant", "a"), ("user", "unanswered")],
     [("user", "q"), ("assistant", "a")], {"trailing_turns_dropped": 1}),
    # leading system turns merge; a later system turn stays in place
    ([("system", "s1"), ("system", "s2"), ("user", "q"), ("assistant", "a"), ("system", "mid"), ("user", "q2"),
      ("assistant", "a2")],
     [("system", "s1\n\ns2"), ("user", "q"), ("assistant", "a"), ("system", "mid"), ("user", "q2"),
      ("assistant", "a2")], {}),
])
def test_normalisation_rules(turns, expected, fixes):
    counts: Counter = Counter()
    out = normalise_turns(turns, counts)
    assert [(m["role"], m["content"]) for m in out] == expected
    assert dict(counts) == fixes


@pytest.mark.parametrize("turns, reason", [
    ([], "empty_conversation"),
    ([("user", " "), ("assistant", "\n")], "empty_conversation"),
    ([("user", "only a question")], "no_assistant_reply"),
    ([("assistant", "only an answer")], "no_assistant_reply"),
    ([("system", "s"), ("user", "q")], "no_assistant_reply"),
    ([("user", "bad \udcff byte"), ("assistant", "a")], "invalid_utf8"),
    ([("user", "lone \ud83d surrogate"), ("assistant", "a")], "invalid_utf8"),
])
def test_normalisation_drops(turns, reason):
    with pytest.raises(Drop) as drop:
        normalise_turns(turns, Counter())
    assert drop.value.reason == reason


def test_alpaca_history_and_system(tmp_path):
    path = _jsonl(tmp_path / "lf.jsonl", [{"instruction": "And 3+3?", "input": "", "output": "6",
                                           "system": "You add.", "history": [["1+1?", "2"]]}])
    convs, _ = load_conversations(str(path))
    assert [(m["role"], m["content"]) for m in convs[0]["messages"]] == [
        ("system", "You add."), ("user", "1+1?"), ("assistant", "2"), ("user", "And 3+3?"), ("assistant", "6")]


def test_clean_option_is_off_by_default(tmp_path):
    html = ('<div class="markdown prose w-full break-words dark:prose-invert light"><p>Use <code>ls</code>:</p>'
            '<pre><div>bash<button>Copy code</button></div><div><code class="language-bash">ls -la</code></div>'
            '</pre></div>')
    rows = [{"id": "x_0", "conversations": [
        {"from": "system", "value": "*This chat conversation is shared from [**TypingMind.com**](https://typingmind.com)*"},
        {"from": "human", "value": "1 / 1\nHow do I list files?"}, {"from": "gpt", "value": html},
        {"from": "human", "value": "in python?"}, {"from": "gpt", "value": "python\nCopy code\nimport os\n"}]}]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(rows))
    raw = load_conversations(str(path))[0][0]["messages"]
    assert raw[2]["content"] == html.strip() and raw[0]["role"] == "system"
    convs, report = load_conversations(str(path), clean=True)
    msgs = convs[0]["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]  # share banner removed
    assert msgs[0]["content"] == "How do I list files?"
    assert msgs[1]["content"] == "Use `ls`:\n\n```bash\nls -la\n```"
    assert msgs[3]["content"] == "python\nimport os"
    assert report.fixes == {"clean_copy_code": 1, "clean_html": 1, "clean_regenerate": 1, "clean_share_notice": 1,
                            "empty_turns_removed": 1}
