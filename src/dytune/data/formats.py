"""Record -> message list: one normaliser for every supported format.

Formats (auto-detected from the fields of the first 200 records, majority wins; `format=` overrides):
  alpaca             {instruction, input?, output, system?, history?}  user = instruction + "\\n\\n" + input
                     (input only when non-empty); `history` is LLaMA-Factory's [[user, assistant], ...]
  sharegpt           {conversations: [{from, value}, ...]}
  messages           {messages | conversation | conversations: [{role, content}, ...]} (OpenAI / ChatML;
                     aliases: openai, chatml, rewild). Extra per-turn keys (Re-Wild/WildChat's
                     finish_reason, toxic, hashed_ip, ...) are ignored; content may be a list of text parts.
  prompt_completion  {prompt, completion}, each a string or a list of messages (TRL's format)
  text               {text}: a plain document, stored as a single assistant message (see tokenize.py:
                     rendered as raw text + EOS, every token trained)
  multiple_choice    {question, choices, answer} (MMLU; also nested under `train`, as in cais/mmlu's
                     auxiliary_train): user = question, assistant = choices[answer] (answer: 0-based index or
                     a letter). `mmlu_answer_bug=True` takes choices[answer - 1] instead, as the original DyT
                     study's RE-WILD rebuild did (every answer then wrong; kept only to reproduce it).

`turns="first"` keeps only the first user turn and the first assistant turn (in that order; system and every
later turn dropped), each the first of its role with text: the original study's ShareGPT and RE-WILD rows.

Roles (case-insensitive): human, user, prompter -> user; gpt, assistant, chatgpt, bing, bard, bot, model,
claude, gpt-4 -> assistant; system -> system. Anything else drops the record (`unknown_role`) unless
`role_map` says what it is; `role_map={"tool": None}` removes those turns instead.

Normalisation of every conversation, in this order (each fix counted in the report under `fixes`):
  1. clean (only with clean=True, see clean.py); strip surrounding whitespace;
  2. empty turns (no text, or whitespace only) are removed              -> empty_turns_removed
  3. leading system turns are merged into one; a system turn later on stays where it is;
  4. consecutive turns of one speaker are merged, joined by a blank line -> merged_turns
  5. assistant turns before the first user turn are removed (nothing prompted them; FastChat does the same)
                                                                         -> leading_assistant_dropped
  6. turns after the last assistant turn are removed (nothing to learn)  -> trailing_turns_dropped
  7. what is left must hold a user turn answered by an assistant turn, else the record is dropped
     (`empty_conversation` when no turn had text, `no_assistant_reply` otherwise).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from dytune.data.clean import clean_text
from dytune.errors import DytuneError

FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion", "text", "multiple_choice")
TURNS = ("all", "first")
FORMAT_ALIASES = {"openai": "messages", "chatml": "messages", "conversation": "messages", "rewild": "messages",
                  "wildchat": "messages", "prompt-completion": "prompt_completion", "completion": "prompt_completion",
                  "plain": "text", "raw": "text",
                  "mmlu": "multiple_choice", "multiple-choice": "multiple_choice", "mcq": "multiple_choice"}

DEFAULT_ROLES: dict[str, str] = {
    **dict.fromkeys(("human", "user", "prompter", "question"), "user"),
    **dict.fromkeys(("gpt", "assistant", "chatgpt", "bing", "bard", "bot", "model", "claude", "gpt-4", "gpt4",
                     "answer"), "assistant"),
    "system": "system",
}

# canonical field -> candidate names tried in order when field_map does not name it
_CANDIDATES: dict[str, tuple[str, ...]] = {
    "messages": ("messages", "conversations", "conversation"),
    "role": ("role", "from"),
    "content": ("content", "value", "text"),
    "instruction": ("instruction",),
    "input": ("input",),
    "output": ("output",),
    "system": ("system",),
    "history": ("history",),
    "prompt": ("prompt",),
    "completion": ("completion",),
    "text": ("text",),
    "question": ("question",),
    "choices": ("choices",),
    "answer": ("answer",),
    "id": ("id", "conversation_id", "conversation_hash", "question_id", "uuid", "idx"),
}
# names other tools use for the same fields (LLaMA-Factory dataset_info.json `columns`/`tags`, axolotl)
_FIELD_ALIASES = {"conversations": "messages", "field_messages": "messages", "role_tag": "role",
                  "message_field_role": "role", "content_tag": "content", "message_field_content": "content",
                  "query": "input", "response": "output", "field_instruction": "instruction",
                  "field_input": "input", "field_output": "output", "field_system": "system",
                  "tools": None, "images": None, "videos": None}
_TAG_ROLES = {"user_tag": "user", "assistant_tag": "assistant", "system_tag": "system",
              "observation_tag": None, "function_tag": None}
_SURROGATE = re.compile("[\ud800-\udfff]")
_MISSING = object()


class Drop(Exception):
    """A record that cannot become a conversation; `reason` is a report drop reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def canonical_format(name: str | None) -> str | None:
    if name is None or name == "auto":
        return None
    key = name.lower().replace(" ", "_")
    key = FORMAT_ALIASES.get(key, key)
    if key not in FORMATS:
        raise DytuneError(f"unknown data format {name!r}: choose one of {', '.join(FORMATS)} "
                          f"(or leave it out to auto-detect)")
    return key


def resolve_fields(field_map: Mapping[str, Any] | None) -> tuple[dict[str, str], dict[str, str | None]]:
    """Canonical field names from a user field map (ours, LLaMA-Factory's or axolotl's spelling).

    Returns (fields, roles_from_tags): LLaMA-Factory's `user_tag: human` style entries are role mappings.
    """
    fields: dict[str, str] = {}
    roles: dict[str, str | None] = {}
    if not field_map:
        return fields, roles
    llama_factory = any(k in field_map for k in ("query", "response"))  # there `prompt` is the instruction
    for key, value in field_map.items():
        if key == "message_property_mappings" and isinstance(value, Mapping):  # axolotl
            for sub, col in value.items():
                if sub in ("role", "content"):
                    fields[sub] = col
            continue
        if key in _TAG_ROLES:
            roles[str(value).lower()] = _TAG_ROLES[key]
            continue
        canon = "instruction" if key == "prompt" and llama_factory else _FIELD_ALIASES.get(key, key)
        if canon is None:
            continue
        if canon not in _CANDIDATES:
            raise DytuneError(f"field_map key {key!r} is not a field dytune knows: use "
                              f"{', '.join(_CANDIDATES)} (LLaMA-Factory's query/response/role_tag/content_tag "
                              "and axolotl's field_messages/message_property_mappings work too)")
        if not isinstance(value, str):
            raise DytuneError(f"field_map[{key!r}] must be a column name (a string), got {value!r}")
        fields[canon] = value
    return fields, roles


def resolve_roles(role_map: Mapping[str, Any] | None, extra: Mapping[str, str | None] | None = None
                  ) -> dict[str, str | None]:
    """Speaker name (lower case) -> user/assistant/system, or None to remove such turns.

    Accepts {speaker: role} and axolotl's {role: [speaker, ...]}."""
    roles: dict[str, str | None] = dict(DEFAULT_ROLES)
    roles.update(extra or {})
    for key, value in (role_map or {}).items():
        if isinstance(value, (list, tuple)):  # axolotl: roles: {user: [human, user]}
            targets = [(str(v).lower(), key) for v in value]
        else:
            targets = [(str(key).lower(), value)]
        for speaker, role in targets:
            if role not in (None, "user", "assistant", "system"):
                raise DytuneError(f"role_map maps {speaker!r} to {role!r}: a role must be user, assistant or "
                                  "system (or None to remove those turns)")
            roles[speaker] = role
    return roles


def _get(record: Mapping, fields: Mapping[str, str], name: str, default: Any = _MISSING) -> Any:
    if name in fields:
        return record.get(fields[name], default)
    for key in _CANDIDATES[name]:
        if key in record:
            return record[key]
    return default


def record_format(record: Mapping, fields: Mapping[str, str]) -> str | None:
    """The format a single record looks like, or None."""
    msgs = _get(record, fields, "messages", None)
    if isinstance(msgs, list):
        first = next((t for t in msgs if isinstance(t, dict)), None)
        if first is not None and ("from" in first or "value" in first) and "role" not in first:
            return "sharegpt"
        return "messages"
    if _get(record, fields, "instruction", None) is not None and _get(record, fields, "output", None) is not None:
        return "alpaca"
    if _get(record, fields, "prompt", None) is not None and _get(record, fields, "completion", None) is not None:
        return "prompt_completion"
    if _get(record, fields, "text", None) is not None:
        return "text"
    if _multiple_choice_record(record, fields) is not None:
        return "multiple_choice"
    return None


def _multiple_choice_record(record: Mapping, fields: Mapping[str, str]) -> Mapping | None:
    """The {question, choices, answer} mapping of an MMLU row (flat, or nested under `train`), or None."""
    for candidate in (record, record.get("train")):
        if isinstance(candidate, Mapping) and all(_get(candidate, fields, k, None) is not None
                                                  for k in ("question", "choices", "answer")):
            return candidate
    return None


def detect_format(records: Iterable[Any], fields: Mapping[str, str], source: str) -> str:
    """Majority format of some records (not just the first, which is TRL's weak spot)."""
    votes: Counter = Counter()
    keys: Counter = Counter()
    for record in records:
        if isinstance(record, Mapping):
            keys.update(record.keys())
            fmt = record_format(record, fields)
            if fmt:
                votes[fmt] += 1
    if not votes:
        seen = ", ".join(k for k, _ in keys.most_common(12)) or "none (no readable record)"
        raise DytuneError(
            f"cannot tell the data format of {source}: its records have the fields [{seen}]. Expected alpaca "
            "(instruction, input, output), sharegpt (conversations of {from, value}), messages (messages or "
            "conversation of {role, content}), prompt_completion (prompt, completion), text (text) or "
            "multiple_choice (question, choices, answer). Pass "
            "format= and field_map= (e.g. --format alpaca --field-map instruction=question,output=answer)")
    return votes.most_common(1)[0][0]


def record_id(record: Mapping, fields: Mapping[str, str], fallback: str) -> str:
    value = _get(record, fields, "id", None)
    if value is None or isinstance(value, (dict, list)):
        return fallback
    text = str(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8") if _SURROGATE.search(text) else text


# -- record -> [(role, text)] -------------------------------------------------------------------------------
def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts
        parts = []
        for part in value:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise Drop("non_text_content", f"{what} holds a {kind!r} part")
        return "".join(parts)
    raise Drop("wrong_type", f"{what} is a {type(value).__name__}, not text")


def _message_turns(items: Any, fields: Mapping[str, str], roles: Mapping[str, str | None], fixes: Counter,
                   what: str = "messages") -> list[tuple[str, str]]:
    if not isinstance(items, list):
        raise Drop("wrong_type", f"{what} is a {type(items).__name__}, not a list of turns")
    turns = []
    for i, turn in enumerate(items):
        if not isinstance(turn, dict):
            raise Drop("wrong_type", f"turn {i} is a {type(turn).__name__}, not an object")
        role = _get(turn, fields, "role", None)
        if role is None:
            raise Drop("missing_field", f"turn {i} has no role/from field (keys: {', '.join(map(str, turn))})")
        if not isinstance(role, str):
            raise Drop("wrong_type", f"turn {i}'s role is a {type(role).__name__}")
        canon = roles.get(role.strip().lower(), _MISSING)
        if canon is _MISSING:
            raise Drop("unknown_role", f"turn {i} is from {role!r} (map it with role_map)")
        content = _get(turn, fields, "content", _MISSING)
        if content is _MISSING:
            raise Drop("missing_field", f"turn {i} has no content/value field")
        text = _text(content, f"turn {i}'s content")
        if canon is None:
            fixes["role_map_removed"] += 1
            continue
        turns.append((canon, text))
    return turns


def _required_text(record: Mapping, fields: Mapping[str, str], name: str) -> str:
    value = _get(record, fields, name)
    if value is _MISSING:
        raise Drop("missing_field", f"no {fields.get(name, name)!r} field")
    if value is not None and not isinstance(value, str):
        raise Drop("wrong_type", f"{fields.get(name, name)!r} is a {type(value).__name__}, not text")
    return value or ""


def record_turns(record: Any, fmt: str, fields: Mapping[str, str], roles: Mapping[str, str | None],
                 fixes: Counter, mmlu_answer_bug: bool = False) -> list[tuple[str, str]]:
    """The raw (role, text) turns of a record in format `fmt`; raises Drop."""
    if not isinstance(record, Mapping):
        raise Drop("not_an_object", type(record).__name__)
    if fmt in ("sharegpt", "messages"):
        items = _get(record, fields, "messages")
        if items is _MISSING:
            raise Drop("missing_field", "no messages/conversations/conversation field")
        return _message_turns(items, fields, roles, fixes)
    if fmt == "alpaca":
        instruction = _required_text(record, fields, "instruction")
        output = _required_text(record, fields, "output")
        extra = _get(record, fields, "input", None)
        if extra is not None and not isinstance(extra, str):
            raise Drop("wrong_type", f"input is a {type(extra).__name__}, not text")
        turns = []
        system = _get(record, fields, "system", None)
        if isinstance(system, str) and system.strip():
            turns.append(("system", system))
        history = _get(record, fields, "history", None) or []
        if not isinstance(history, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in history):
            raise Drop("wrong_type", "history is not a list of [user, assistant] pairs")
        for q, a in history:
            turns += [("user", _text(q, "history")), ("assistant", _text(a, "history"))]
        # the study's (and Alpaca's) rule: instruction.strip() + "\n\n" + input.strip(), input only when non-empty
        prompt = instruction.strip() + ("\n\n" + extra.strip() if extra and extra.strip() else "")
        return turns + [("user", prompt), ("assistant", output)]
    if fmt == "prompt_completion":
        turns = []
        for name, role in (("prompt", "user"), ("completion", "assistant")):
            value = _get(record, fields, name)
            if value is _MISSING:
                raise Drop("missing_field", f"no {name!r} field")
            if isinstance(value, list) and all(isinstance(t, dict) for t in value):
                turns += _message_turns(value, fields, roles, fixes, name)
            else:
                turns.append((role, _text(value, name)))
        return turns
    if fmt == "text":
        return [("text", _required_text(record, fields, "text"))]
    if fmt == "multiple_choice":
        return _multiple_choice_turns(record, fields, mmlu_answer_bug)
    raise ValueError(fmt)


def _multiple_choice_turns(record: Mapping, fields: Mapping[str, str], answer_bug: bool) -> list[tuple[str, str]]:
    row = _multiple_choice_record(record, fields)
    if row is None:
        raise Drop("missing_field", "no question/choices/answer fields (flat or under 'train')")
    question = _required_text(row, fields, "question")
    choices, answer = _get(row, fields, "choices"), _get(row, fields, "answer")
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise Drop("wrong_type", "choices is not a non-empty list of strings")
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().isalpha():
        answer = ord(answer.strip().upper()) - ord("A")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise Drop("wrong_type", f"answer {answer!r} is not an index into {len(choices)} choices")
    # the study's bug: a 0-based index minus one (Python wraps answer 0 to the last choice)
    return [("user", question), ("assistant", choices[answer - 1] if answer_bug else choices[answer])]


def first_exchange(turns: list[tuple[str, str]], fixes: Counter) -> list[tuple[str, str]]:
    """`turns="first"`: the first user turn and the first assistant turn with text, user first; the rest dropped."""
    picked = []
    for role in ("user", "assistant"):
        found = next((t for t in turns if t[0] == role and t[1].strip()), None)
        if found is not None:
            picked.append(found)
    fixes["first_turns_only_dropped"] += len(turns) - len(picked)
    return picked


# -- normalisation --------------------------------------------------------------------------------------------
def normalise_turns(turns: list[tuple[str, str]], fixes: Counter, clean: bool = False) -> list[dict[str, str]]:
    """Apply the normalisation rules in the module docstring; raises Drop."""
    kept: list[list[str]] = []
    had_text = False
    for role, text in turns:
        if clean:
            text = clean_text(text, fixes)
        text = text.strip()
        if not text:
            fixes["empty_turns_removed"] += 1
            continue
        if not text.isascii() and _SURROGATE.search(text):
            raise Drop("invalid_utf8", f"a {role} turn holds bytes that are not UTF-8 (or an unpaired surrogate)")
        had_text = True
        if role == "text":
            return [{"role": "assistant", "content": text}]
        if kept and kept[-1][0] == role:
            kept[-1][1] += "\n\n" + text
            if role != "system" or len(kept) > 1:
                fixes["merged_turns"] += 1
            continue
        kept.append([role, text])
    if not had_text:
        raise Drop("empty_conversation", "no turn has text")
    system = [t for t in kept[:1] if t[0] == "system"]
    body = kept[len(system):]
    lead = 0
    while lead < len(body) and body[lead][0] != "user":
        lead += 1
    if lead:
        fixes["leading_assistant_dropped"] += sum(1 for t in body[:lead] if t[0] == "assistant")
        body = body[lead:]
    end = len(body)
    while end and body[end - 1][0] != "assistant":
        end -= 1
    if end < len(body):
        fixes["trailing_turns_dropped"] += len(body) - end
        body = body[:end]
    if not any(r == "assistant" for r, _ in body):
        raise Drop("no_assistant_reply", "no user turn is answered by an assistant turn")
    return [{"role": r, "content": t} for r, t in system + body]
