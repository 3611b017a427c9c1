"""MT-bench answers: a real two-turn conversation per question, batched, resumable, in FastChat's format.

Turn 2 is asked after the model's *own* turn-1 answer, through the tokenizer's chat template:

    turn 1 prompt = template([user q1])                      + assistant header
    turn 2 prompt = template([user q1, assistant a1, user q2]) + assistant header

Greedy by default; `do_sample` with a seed, or FastChat's per-category temperatures, as options.

`concat_turns=True` is the original DyT study's protocol instead (its Benchmarks notebook): no chat template;
both questions go into one prompt as the tokenizer's text pair (`tokenizer(q1, q2)`, which for GPT-2/Pythia
tokenizers is q1's tokens followed by q2's, no separator), one greedy `generate` per batch with left padding and
pad = EOS, one answer per question (`turns: [answer]`). MT-bench asks turn 2 after the model's own turn-1
answer, so that single answer is not an MT-bench answer: it exists to reproduce the study's numbers.
Generation stops at the tokenizer's EOS and at the chat template's end-of-turn token (`<|im_end|>` for
ChatML/SmolLM2), whichever comes first.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dytune.errors import DytuneError
from dytune.eval.answers import load_answers, load_questions, write_jsonl

# FastChat `llm_judge/common.py::temperature_config`: sampling temperature per MT-bench category
# (0.0 = greedy). Used with `category_temperatures=True`.
FASTCHAT_TEMPERATURES: dict[str, float] = {
    "writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
    "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0,
}
_FASTCHAT_DEFAULT_TEMPERATURE = 0.7  # FastChat's value for a category not in the table

# End-of-turn markers of common chat templates, tried when the template probe finds none.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>")


@dataclass
class GenerationSettings:
    """How answers are generated; stored in every answer record (key `generation`)."""

    max_new_tokens: int = 1024  # FastChat's default
    do_sample: bool = False  # greedy unless set
    temperature: float = 0.7  # when do_sample and not category_temperatures
    top_p: float = 1.0
    top_k: int = 50  # transformers' default, which FastChat's gen_model_answer also gets
    seed: int = 0
    category_temperatures: bool = False  # FastChat's per-category temperatures (0.0 means greedy)
    batch_size: int = 8
    dtype: str = "float32"
    concat_turns: bool = False  # the original study's one-prompt protocol (module docstring)
    stop_tokens: list[str] = field(default_factory=list)  # filled in from the tokenizer

    def temperature_for(self, category: str) -> float:
        """0.0 means greedy."""
        if self.category_temperatures:
            return FASTCHAT_TEMPERATURES.get(category, _FASTCHAT_DEFAULT_TEMPERATURE)
        return self.temperature if self.do_sample else 0.0

    def comparable(self) -> dict:
        """The settings that change answers (batch size changes sampled answers only)."""
        d = asdict(self)
        if not (self.do_sample or self.category_temperatures):
            d.pop("batch_size")
        return d


@dataclass
class AnswerRunReport:
    path: Path
    answered: int  # new records written by this run
    skipped: int  # already in the file
    generated_tokens: int
    seconds: float
    capped: int = 0  # turns whose max_new_tokens was cut to fit the model's context

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end an answer: EOS (tokenizer and generation config) and the chat template's
    end-of-turn token, found by rendering a one-turn conversation and reading the token after the answer."""
    ids: list[int] = []

    def add(token_id):
        if isinstance(token_id, (list, tuple)):
            for t in token_id:
                add(t)
        elif token_id is not None and int(token_id) not in ids:
            ids.append(int(token_id))

    add(tokenizer.eos_token_id)
    if model is not None and getattr(model, "generation_config", None) is not None:
        add(model.generation_config.eos_token_id)
    if getattr(tokenizer, "chat_template", None):
        marker = "XQZANSWERXQZ"
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False)
        except Exception:  # noqa: BLE001 - some templates reject this probe; fall back to the names below
            text = ""
        if marker in text:
            after = tokenizer(text.split(marker, 1)[1], add_special_tokens=False)["input_ids"]
            special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
            if after and after[0] in special:
                add(after[0])
    if len(ids) <= 1:
        vocab = tokenizer.get_vocab()
        for name in _END_OF_TURN_TOKENS:
            if name in vocab and name in tokenizer.all_special_tokens:
                add(vocab[name])
    return ids


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The text the model sees: the conversation so far plus the assistant header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _context_limit(model) -> int | None:
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def encode_prompts(tokenizer, prompts: list[str] | list[list[str]], concat_turns: bool = False) -> dict:
    """A left-padded batch. `concat_turns`: each prompt is a question's turns, encoded as the study did
    (`tokenizer(q1, q2)`: the tokenizer's text pair, special tokens as the tokenizer adds them), pad = EOS when
    the tokenizer has no pad token."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        if not concat_turns:
            return tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        too_long = [turns for turns in prompts if len(turns) > 2]
        if too_long:
            raise DytuneError(f"--concat-turns joins at most two turns (the tokenizer's text pair); a question has "
                              f"{len(too_long[0])}")
        ids = [tokenizer(*turns)["input_ids"] for turns in prompts]
        return tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = pad


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[str] | list[list[str]], *, max_new_tokens: int,
                   temperature: float, top_p: float = 1.0, top_k: int = 50, seed: int = 0,
                   stop_ids: list[int] | None = None, concat_turns: bool = False
                   ) -> tuple[list[str], list[int], float, bool]:
    """Generate one continuation per prompt (left-padded batch; `concat_turns`: see `encode_prompts`).

    Returns (texts, generated token counts including the stop token, wall seconds, capped) where `capped`
    says max_new_tokens was reduced to fit the model's context.
    """
    from transformers import GenerationConfig

    stop_ids = stop_ids or stop_token_ids(tokenizer, model)
    enc = encode_prompts(tokenizer, prompts, concat_turns)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    prompt_len = enc["input_ids"].shape[1]
    capped = False
    limit = _context_limit(model)
    if limit is not None:
        if prompt_len >= limit:
            raise DytuneError(f"a prompt of {prompt_len} tokens does not fit the model's context of {limit} "
                              "tokens; lower --max-new-tokens (turn 2 includes the turn-1 answer) or use a "
                              "model with a longer context")
        if prompt_len + max_new_tokens > limit:
            max_new_tokens, capped = limit - prompt_len, True
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]  # the study: EOS
    sample = temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=sample, eos_token_id=stop_ids, pad_token_id=pad_id,
        **(dict(temperature=temperature, top_p=top_p, top_k=top_k) if sample else {}),
    )
    if sample:
        torch.manual_seed(seed)
    start = time.perf_counter()
    out = model.generate(**enc, generation_config=config)
    seconds = time.perf_counter() - start
    texts, counts = [], []
    stop = torch.tensor(stop_ids, device=out.device)
    for row in out[:, prompt_len:]:
        hits = torch.isin(row, stop).nonzero()
        n = int(hits[0]) + 1 if len(hits) else len(row)  # tokens up to and including the stop token
        text = tokenizer.decode(row[: n - 1 if len(hits) else n], skip_special_tokens=True)
        texts.append(text if concat_turns else text.strip())  # the study kept the decoded text as it was
        counts.append(n)
    return texts, counts, seconds, capped


def generate_answers(model, tokenizer, questions: list[dict], out_path: str | Path, *, model_id: str,
                     settings: GenerationSettings | None = None, progress: bool = True) -> AnswerRunReport:
    """Answer every question not yet in `out_path` (appending FastChat records), batch by batch.

    Rerunning with the same file skips answered questions; rerunning with different generation settings
    is an error, so one file never mixes two decoding setups.
    """
    settings = settings or GenerationSettings()
    out_path = Path(out_path)
    if not settings.concat_turns and not getattr(tokenizer, "chat_template", None):
        raise DytuneError(f"the tokenizer of {model_id!r} has no chat template, so two-turn conversations cannot "
                          "be formatted; use an instruct/chat model or pass --chat-template FILE (a Jinja template), "
                          "or --concat-turns for the original study's one-prompt protocol (no template)")
    stop_ids = stop_token_ids(tokenizer, model)
    settings.stop_tokens = [tokenizer.convert_ids_to_tokens(i) for i in stop_ids]

    done: dict = {}
    if out_path.exists() and out_path.stat().st_size > 0:
        done = load_answers(out_path)
        previous = next(iter(done.values())).get("generation")
        if previous is not None:
            old = GenerationSettings(**{k: v for k, v in previous.items() if k in GenerationSettings.__dataclass_fields__})
            if old.comparable() != settings.comparable():
                diff = {k: (old.comparable().get(k), v) for k, v in settings.comparable().items()
                        if old.comparable().get(k) != v}
                raise DytuneError(f"{out_path} was generated with other settings {diff} (old, new); resume with "
                                  "the same options, or write to another --out file")
    pending = [q for q in questions if q["question_id"] not in done]

    # one temperature per generate() call: group by it, keep question order inside a group
    groups: dict[float, list[dict]] = {}
    for q in pending:
        groups.setdefault(settings.temperature_for(q.get("category", "")), []).append(q)

    report = AnswerRunReport(out_path, 0, len(questions) - len(pending), 0, 0.0)
    gen_record = asdict(settings)
    batch_no = 0
    for temperature, group in groups.items():
        for start in range(0, len(group), settings.batch_size):
            batch = group[start:start + settings.batch_size]
            convs: list[list[dict]] = [[] for _ in batch]
            turns: list[list[str]] = [[] for _ in batch]
            counts: list[list[int]] = [[] for _ in batch]
            secs: list[list[float]] = [[] for _ in batch]
            n_turns = 1 if settings.concat_turns else max(len(q["turns"]) for q in batch)
            for t in range(n_turns):
                idx = [i for i, q in enumerate(batch) if t < len(q["turns"])]
                for i in idx:
                    convs[i].append({"role": "user", "content": batch[i]["turns"][t]})
                prompts = ([batch[i]["turns"] for i in idx] if settings.concat_turns else
                           [render_prompt(tokenizer, convs[i]) for i in idx])
                texts, ns, seconds, capped = generate_batch(
                    model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens, temperature=temperature,
                    top_p=settings.top_p, top_k=settings.top_k, seed=settings.seed * 1_000_003 + batch_no * 10 + t,
                    stop_ids=stop_ids, concat_turns=settings.concat_turns)
                report.capped += len(idx) if capped else 0
                report.seconds += seconds
                for i, text, n in zip(idx, texts, ns):
                    convs[i].append({"role": "assistant", "content": text})
                    turns[i].append(text)
                    counts[i].append(n)
                    secs[i].append(round(seconds, 4))
                    report.generated_tokens += n
            records = [{
                "question_id": q["question_id"],
                "answer_id": uuid.uuid4().hex[:22],
                "model_id": model_id,
                "choices": [{"index": 0, "turns": turns[i], "gen_tokens": counts[i], "gen_seconds": secs[i],
                             "tokens_per_s": [round(n / s, 2) if s > 0 else None for n, s in zip(counts[i], secs[i])]}],
                "tstamp": time.time(),
                "generation": {**gen_record, "temperature_used": temperature},
            } for i, q in enumerate(batch)]
            write_jsonl(out_path, records)  # after each batch: an interrupted run resumes from here
            report.answered += len(batch)
            batch_no += 1
            if progress:
                print(f"  answered {report.skipped + report.answered}/{len(questions)} "
                      f"({report.tokens_per_s:.1f} generated tokens/s)", file=sys.stderr, flush=True)
    return report


def answer_questions(model_name: str, out_path: str | Path, *, questions_path: str | Path | None = None,
                     model_id: str | None = None, settings: GenerationSettings | None = None,
                     device: str | None = None, chat_template: str | None = None,
                     limit: int | None = None) -> AnswerRunReport:
    """Load a model by name (any name `dytune.models` resolves) and answer the questions."""
    from dytune.models import load_model, load_tokenizer

    settings = settings or GenerationSettings()
    questions = load_questions(questions_path)
    if limit is not None:
        questions = questions[:limit]
    model = load_model(model_name, dtype=getattr(torch, settings.dtype), device=device)
    tokenizer = load_tokenizer(model_name)
    if chat_template is not None:
        path = Path(chat_template)
        if not path.is_file():
            raise DytuneError(f"--chat-template file not found: {path}")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    return generate_answers(model, tokenizer, questions, out_path,
                            model_id=model_id or default_model_id(model_name), settings=settings)


def default_model_id(model_name: str) -> str:
    """A short id for a model name: a directory's last component, a Hub id's name."""
    name = model_name.rstrip("/")
    return Path(name).stem if name.endswith(".gguf") else Path(name).name or name
