"""What happened to every record: read, kept, dropped by reason, per source; saved as `data_report.json`.

Drop reasons (record level, while loading):
  malformed_json      the record is not valid JSON (bad line in JSONL, broken object in a JSON array)
  truncated_record    the file ends in the middle of a record (e.g. a JSON array cut off mid-string)
  invalid_utf8        a message holds bytes that are not UTF-8 (or an unpaired `\\udXXX` surrogate escape)
  not_an_object       a JSON value that is not an object, e.g. a bare string in the array
  missing_field       the record lacks a field its format needs (e.g. `output` for alpaca)
  wrong_type          a field has the wrong type (e.g. `conversations` is a string, a turn's text is a number)
  non_text_content    a message holds non-text parts (images, audio)
  unknown_role        a speaker that is neither user, assistant nor system (pass role_map to map it)
  empty_conversation  no turn with text
  no_assistant_reply  no user turn answered by an assistant turn once the turns are normalised
  unreadable_file     a whole file that could not be opened or decoded (corrupt Parquet/Arrow)
and while tokenizing:
  template_error      the chat template refused the conversation (e.g. roles must alternate)
  no_trainable_tokens nothing left to learn from after truncation to max_length
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_EXAMPLES = 3  # examples kept per drop reason, so the report says *which* records were bad


@dataclass
class SourceReport:
    """Counts for one source (a file, folder, glob or Hub id)."""

    source: str
    format: str = "?"
    weight: float = 1.0
    files: int = 0
    read: int = 0
    kept: int = 0  # after normalisation, before weighting and max_samples
    dropped: Counter = field(default_factory=Counter)
    fixes: Counter = field(default_factory=Counter)  # turn-level repairs (see formats.normalise_messages)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, where: str, detail: str = "") -> None:
        self.dropped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(f"{where}: {detail}" if detail else where)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "format": self.format, "weight": self.weight, "files": self.files,
                "read": self.read, "kept": self.kept, "dropped": dict(sorted(self.dropped.items())),
                "fixes": dict(sorted(self.fixes.items())), "examples": self.examples}


@dataclass
class DataReport:
    """The summary of one load (and of any tokenization run with `report=`)."""

    sources: list[SourceReport] = field(default_factory=list)
    selected: int = 0  # conversations returned by load_conversations (after weights and max_samples)
    subsampled_out: int = 0  # kept conversations left out by max_samples or a weight < 1
    repeated: int = 0  # extra copies added by weights > 1
    turns: int = 0  # messages in the returned conversations
    tokenized: dict[str, Any] = field(default_factory=dict)  # examples, tokens, trainable_tokens, ...
    token_dropped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)  # added special tokens, template choice, warnings

    # -- totals -------------------------------------------------------------------------------------------
    @property
    def read(self) -> int:
        return sum(s.read for s in self.sources)

    @property
    def dropped(self) -> dict[str, int]:
        total: Counter = Counter()
        for s in self.sources:
            total.update(s.dropped)
        total.update(self.token_dropped)
        return dict(sorted(total.items()))

    @property
    def kept(self) -> int:
        """Conversations that survive loading and (if run) tokenization."""
        return self.selected - sum(self.token_dropped.values())

    @property
    def fixes(self) -> dict[str, int]:
        total: Counter = Counter()
        for s in self.sources:
            total.update(s.fixes)
        return dict(sorted(total.items()))

    def add_tokenized(self, stats: dict[str, int], dropped: Counter) -> None:
        """Accumulate one tokenization run (train and validation both add to the same report)."""
        for key, value in stats.items():
            self.tokenized[key] = self.tokenized.get(key, 0) + value
        self.token_dropped.update(dropped)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    # -- output -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"read": self.read, "kept": self.kept, "dropped": self.dropped, "fixes": self.fixes,
                "selected": self.selected, "subsampled_out": self.subsampled_out, "repeated": self.repeated,
                "turns": self.turns, "tokenized": dict(self.tokenized),
                "token_dropped": dict(sorted(self.token_dropped.items())),
                "sources": [s.to_dict() for s in self.sources], "notes": list(self.notes)}

    def save(self, path: str | Path) -> Path:
        """Write the report as JSON; a directory gets `data_report.json` inside it."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / "data_report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    def table(self) -> str:
        """A plain-text summary for the terminal."""
        rows = [("source", "format", "read", "kept", "dropped")]
        for s in self.sources:
            name = s.source if len(s.source) <= 48 else "..." + s.source[-45:]
            rows.append((name, s.format, f"{s.read:,}", f"{s.kept:,}", f"{sum(s.dropped.values()):,}"))
        if len(self.sources) > 1:
            rows.append(("total", "", f"{self.read:,}", f"{sum(s.kept for s in self.sources):,}",
                         f"{sum(sum(s.dropped.values()) for s in self.sources):,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        dropped = self.dropped
        if dropped:
            lines.append("dropped by reason:")
            examples = {}
            for s in self.sources:
                for reason, shown in s.examples.items():
                    examples.setdefault(reason, shown[0])
            for reason, count in dropped.items():
                hint = f"   e.g. {examples[reason][:90]}" if reason in examples else ""
                lines.append(f"  {reason:<20} {count:>8,}{hint}")
        fixes = self.fixes
        if fixes:
            lines.append("turn fixes: " + ", ".join(f"{k} {v:,}" for k, v in fixes.items()))
        extra = []
        if self.subsampled_out:
            extra.append(f"left out by max_samples/weights {self.subsampled_out:,}")
        if self.repeated:
            extra.append(f"weights repeated {self.repeated:,}")
        lines.append(f"conversations: {self.kept:,}   turns: {self.turns:,}"
                     + (f"   ({'; '.join(extra)})" if extra else ""))
        t = self.tokenized
        if t:
            share = 100 * t.get("trainable_tokens", 0) / max(1, t.get("tokens", 0))
            lines.append(f"examples: {t.get('examples', 0):,}   tokens: {t.get('tokens', 0):,}   trainable tokens: "
                         f"{t.get('trainable_tokens', 0):,} ({share:.1f}%)   truncated: {t.get('truncated', 0):,}")
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)
