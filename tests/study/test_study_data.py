"""The study's RE-WILD rebuild (notebooks/modReWILDcreate.ipynb) builds offline from local stand-ins of its three
Hub sources, row for row what the notebook's own `datasets` code makes of them (MMLU bug fixed, or kept)."""

from __future__ import annotations

from study_helpers import N_MMLU, N_TULU, N_WILDCHAT, localise, mmlu_rows, study_config, tulu_rows, wildchat_rows

from dytune.data import DataSpec


def notebook_mix(fixed: bool, n_wildchat: int) -> list[tuple[str, str]]:
    """modReWILDcreate.ipynb's cells 6-21 run on the stand-in rows (`answer - 1` unless `fixed`)."""
    import datasets

    q72 = datasets.Dataset.from_list(wildchat_rows()).shuffle(seed=42).select(range(n_wildchat))
    pairs = [(r["conversation"][0]["content"], r["conversation"][1]["content"]) for r in q72]
    for row in mmlu_rows():
        data = row["train"]
        pairs.append((data["question"], data["choices"][data["answer"] if fixed else data["answer"] - 1]))
    pairs += [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in tulu_rows()]
    return pairs


def _mix(hub_standins, tmp_path, rows=None, **source_changes):
    data = localise(study_config("distilgpt2-lora-rewild")["data"], hub_standins, rows)
    for item in data["source"]:
        item.update(source_changes.get(item["format"], {}))
    spec = DataSpec.from_dict({**data, "cache_dir": str(tmp_path)})
    convs, report = spec.load()
    return [(m[0]["content"], m[1]["content"]) for m in convs["messages"]], convs, report


def test_rewild_rebuild_matches_the_notebook_with_the_mmlu_answer_fixed(hub_standins, tmp_path):
    pairs, convs, report = _mix(hub_standins, tmp_path)
    assert pairs == notebook_mix(fixed=True, n_wildchat=N_WILDCHAT)  # take: 200000 keeps all 30 stand-in rows
    assert all([m["role"] for m in msgs] == ["user", "assistant"] for msgs in convs["messages"])
    assert [s.kept for s in report.sources] == [N_WILDCHAT, N_MMLU, N_TULU]
    assert [s.format for s in report.sources] == ["messages", "multiple_choice", "messages"]
    assert report.sources[0].fixes["first_turns_only_dropped"] == 2 * len(range(0, N_WILDCHAT, 4))


def test_rewild_rebuild_keeps_the_study_bug_when_asked(hub_standins, tmp_path):
    pairs, _, _ = _mix(hub_standins, tmp_path, multiple_choice={"mmlu_answer_bug": True})
    assert pairs == notebook_mix(fixed=False, n_wildchat=N_WILDCHAT)
    fixed = dict(notebook_mix(fixed=True, n_wildchat=N_WILDCHAT)[N_WILDCHAT:N_WILDCHAT + N_MMLU])
    assert all(dict(pairs)[q] != a for q, a in fixed.items())  # every MMLU answer wrong, as in the study


def test_rewild_wildchat_selection_is_the_notebooks_shuffle(hub_standins, tmp_path):
    """shuffle(seed=42).select(range(200000)), scaled to 12 of the 30 stand-in rows."""
    pairs, _, _ = _mix(hub_standins, tmp_path, rows={200_000: 12})
    assert pairs[:12] == notebook_mix(fixed=True, n_wildchat=12)[:12]
    assert len(pairs) == 12 + N_MMLU + N_TULU


def test_pythia_held_out_rows_are_the_ones_the_shuffle_did_not_select(hub_standins, tmp_path):
    data = localise(study_config("pythia-14m-full-rewild")["data"], hub_standins, {200_000: 12, 2_000: 5})
    train, val, _ = DataSpec.from_dict({**data, "cache_dir": str(tmp_path)}).load_splits()
    import datasets

    order = datasets.Dataset.from_list(wildchat_rows()).shuffle(seed=42)["conversation_hash"]
    assert train["id"][:12] == order[:12] and val["id"] == order[12:17]
    assert not set(train["id"]) & set(val["id"])


def test_official_rewild_mix_is_read_from_its_conversation_column(tmp_path):
    """nyu-dice-lab/wildchat50m-rewild-sft-385700's layout: OpenAI-style messages in `conversation`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"conversation_hash": f"{i:032x}", "model": "Llama-3.3-70B-Instruct",
             "conversation": [{"role": "user", "content": f"q{i}", "toxic": False},
                              {"role": "assistant", "content": f"a{i}", "toxic": False},
                              {"role": "user", "content": "more", "toxic": False},
                              {"role": "assistant", "content": "sure", "toxic": False}]} for i in range(4)]
    (tmp_path / "rewild").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rewild" / "train-00000-of-00001.parquet")
    convs, report = DataSpec(source=str(tmp_path / "rewild")).load()
    assert report.sources[0].format == "messages" and len(convs) == 4
    assert [m["content"] for m in convs["messages"][1]] == ["q1", "a1", "more", "sure"]  # all turns, as dytune reads
