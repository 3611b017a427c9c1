"""A report as a list of blocks, rendered to Markdown and to a static HTML page with the same content."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
code, pre { background: #f6f6f6; border-radius: 3px; } pre { padding: 0.6em; overflow-x: auto; }
"""


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return out


def _cell_md(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


@dataclass
class Document:
    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("bullets", list(items)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def table(self, headers: list[str], rows: list[list], numeric: set[int] | None = None) -> None:
        """numeric: column indices aligned right."""
        self.blocks.append(("table", list(headers), [list(r) for r in rows], set(numeric or ())))

    def image(self, path: Path, caption: str, out_dir: Path) -> None:
        self.blocks.append(("image", Path(path).relative_to(out_dir).as_posix(), caption))

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                lines += [f"{'#' * block[1]} {block[2]}", ""]
            elif kind == "para":
                lines += [block[1], ""]
            elif kind == "bullets":
                lines += [f"- {item}" for item in block[1]] + [""]
            elif kind == "code":
                lines += ["```", block[1].rstrip("\n"), "```", ""]
            elif kind == "table":
                _, headers, rows, numeric = block
                lines.append("| " + " | ".join(_cell_md(h) for h in headers) + " |")
                lines.append("|" + "|".join("---:" if i in numeric else "---" for i in range(len(headers))) + "|")
                lines += ["| " + " | ".join(_cell_md(c) for c in row) + " |" for row in rows]
                lines.append("")
            elif kind == "image":
                lines += [f"![{block[2]}]({block[1]})", "", f"*{block[2]}*", ""]
        return "\n".join(lines).rstrip("\n") + "\n"

    def html(self) -> str:
        parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
                 f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
                 f"<h1>{html.escape(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                parts.append(f"<h{block[1]}>{_inline_html(block[2])}</h{block[1]}>")
            elif kind == "para":
                parts.append(f"<p>{_inline_html(block[1])}</p>")
            elif kind == "bullets":
                parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "code":
                parts.append(f"<pre><code>{html.escape(block[1])}</code></pre>")
            elif kind == "table":
                _, headers, rows, numeric = block
                head = "".join(f"<th>{_inline_html(str(h))}</th>" for h in headers)
                num = ' class="num"'
                body = "".join("<tr>" + "".join(
                    f"<td{num if i in numeric else ''}>{_inline_html(str(c))}</td>"
                    for i, c in enumerate(row)) + "</tr>" for row in rows)
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "image":
                src, caption = html.escape(block[1]), _inline_html(block[2])
                parts.append(f"<figure><img src=\"{src}\" alt=\"{html.escape(block[2])}\">"
                             f"<figcaption>{caption}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def write(self, out_dir: Path, stem: str = "report") -> tuple[Path, Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        md, page = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
        md.write_text(self.markdown())
        page.write_text(self.html())
        return md, page
