"""Optional cleaning of ShareGPT-style scrapes (`clean=True`; off by default). Standard library only.

Rules, each counted in the report's `fixes` as `clean_<rule>`:
  html          a message that is ChatGPT web markup (`<div class="markdown prose ...">`, or wholly wrapped in
                `<p>...</p>`) becomes Markdown-ish text: paragraphs, lists, headings, ``` fences from <pre>,
                `code` from <code>, entities unescaped. HTML that a user pasted as code is left alone: only
                the export wrapper triggers the conversion.
  copy_code     the "Copy code" / "Copy to clipboard" button text left inside code blocks
                ("python\\nCopy code\\nprint(1)", "```pythonCopy code...").
  regenerate    UI noise: a leading "1 / 2" answer counter, "Regenerate response" lines,
                "Copy12 chars / 3 words" counters.
  share_notice  "*This chat conversation is shared from [TypingMind.com](...)*" and similar share banners.
Rules follow FastChat's `clean_sharegpt.py` (which needs bs4 + markdownify); a turn left empty is removed.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from html.parser import HTMLParser

_EXPORT_MARKUP = re.compile(r'^\s*<div\b[^>]*class="[^"]*\b(markdown|prose|request-)', re.I)
_WRAPPED_P = re.compile(r"^\s*<p>.*</p>\s*$", re.S)
_COPY_FENCED = re.compile(r"```([\w+#.-]*)[ \t]*\n?[ \t]*(?:Copy code|Copy to clipboard)+[ \t]*\n?")
_COPY_LINE = re.compile(r"(?m)^([\w+#.-]*)[ \t]*\n?[ \t]*(?:Copy code|Copy to clipboard)[ \t]*\n")
_COUNTER_HEAD = re.compile(r"^\s*\d+\s*/\s*\d+\s*\n")
_REGENERATE = re.compile(r"(?m)^[ \t]*Regenerate response[ \t]*\n?")
_COPY_CHARS = re.compile(r"Copy\d+ chars? / \d+ words?")
_SHARE_NOTICE = re.compile(r"^\s*\*This (?:chat )?conversation is shared from \[.*?\]\(.*?\)\*\s*", re.I)


def clean_text(text: str, counts: Counter) -> str:
    """Apply the rules above to one message; `counts[f"clean_{rule}"]` counts the messages each rule changed."""
    if "<" in text and (_EXPORT_MARKUP.match(text) or _WRAPPED_P.match(text)):
        text = html_to_text(text)
        counts["clean_html"] += 1
    if "Copy" in text:
        new = _COPY_FENCED.sub(lambda m: f"```{m.group(1)}\n", text)
        new = _COPY_LINE.sub(lambda m: f"{m.group(1)}\n" if m.group(1) else "", new)
        new = _COPY_CHARS.sub("", new)
        if new != text:
            counts["clean_copy_code"] += 1
            text = new
    new = _REGENERATE.sub("", _COUNTER_HEAD.sub("", text, count=1))
    if new != text:
        counts["clean_regenerate"] += 1
        text = new
    if text.lstrip().startswith("*This"):
        new = _SHARE_NOTICE.sub("", text)
        if new != text:
            counts["clean_share_notice"] += 1
            text = new
    return text


_BLOCK = {"p", "div", "br", "tr", "table", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "hr"}


class _ToText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.pre = 0
        self.lists: list[list[int]] = []  # [ordered?, counter]
        self.skip = 0  # inside <button> (the "Copy code" button) or <script>/<style>
        self._pending_lang = False
        self._label = ""

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("button", "script", "style", "svg"):
            self.skip += 1
        elif tag == "pre":
            self.pre += 1
            self.out.append("\n```")
            self._pending_lang = True  # the language comes from the <code class="language-x"> inside
            self._label = ""  # ...or from the label ChatGPT shows above the code ("python")
        elif tag == "code" and self.pre:
            cls = dict(attrs).get("class") or ""
            m = re.search(r"language-([\w+#.-]+)", cls)
            if self._pending_lang:
                self.out.append((m.group(1) if m else self._label.strip()) + "\n")
                self._pending_lang = False
        elif tag == "code":
            self.out.append("`")
        elif tag in ("ul", "ol"):
            self.lists.append([tag == "ol", 0])
        elif tag == "li":
            if self.lists:
                self.lists[-1][1] += 1
                ordered, n = self.lists[-1]
                self.out.append("\n" + "  " * (len(self.lists) - 1) + (f"{n}. " if ordered else "- "))
            else:
                self.out.append("\n- ")
        elif tag in ("strong", "b"):
            self.out.append("**")
        elif tag in ("em", "i"):
            self.out.append("*")
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.out.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in _BLOCK and not self.pre:
            self.out.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("button", "script", "style", "svg"):
            self.skip = max(0, self.skip - 1)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
            if self._pending_lang:
                self.out.append("\n")
                self._pending_lang = False
            self.out.append("\n```\n")
        elif tag == "code" and not self.pre:
            self.out.append("`")
        elif tag in ("ul", "ol"):
            if self.lists:
                self.lists.pop()
            self.out.append("\n")
        elif tag in ("strong", "b"):
            self.out.append("**")
        elif tag in ("em", "i"):
            self.out.append("*")
        elif tag in _BLOCK and not self.pre:
            self.out.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self._pending_lang:  # text inside <pre> before <code>: the language label
            self._label += data
            return
        self.out.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(text: str) -> str:
    """ChatGPT-export HTML -> Markdown-ish plain text."""
    parser = _ToText()
    parser.feed(text)
    parser.close()
    out = "".join(parser.out)
    out = re.sub(r"[ \t]+\n", "\n", out)
    out = re.sub(r"\n{3,}", "\n\n", out)
    return html.unescape(out).strip()
