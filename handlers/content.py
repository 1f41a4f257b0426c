"""The `content` engine: the document steps of a content pipeline (docs/pipelines.md), in
plain Python with no model or network.

- `content.outline` splits a document into sections: at its Markdown headings (`#` to `###`)
  when it has some, else one section per paragraph, headed by its first sentence. A mapped
  step (`map_over: "outline.sections"`) then works on one section each.
- `content.assemble` puts a draft back together from its parents' results, in `depends_on`
  order and, within a map's list of results, in item order: each result's `heading` and text
  (`text`, `summary`, `content` or `body`, as handlers/inputs.py reads them).

Both read `text` or their parents' text (handlers/inputs.py) and check their parameters
(`max_sections`, `title`) as the other built-ins do: a bad one fails the job permanently
with the field named.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from app import JobContext, handler
from handlers.inputs import TEXT_FIELDS, _bad, text_input
from handlers.text_intelligence import MAX_CHARS, paragraphs, sentences, words

HEADING = re.compile(r"^(#{1,3})[ \t]+(.+?)[ \t#]*$", re.M)
MAX_HEADING = 120
MAX_SECTIONS = 10_000


def _title(ctx: JobContext) -> str | None:
    title = ctx.params.get("title")
    if title is not None and (not isinstance(title, str) or not title.strip() or len(title) > 500):
        raise _bad("title", "must be a non-empty string of at most 500 characters")
    return title


def _cut(text: str, limit: int = MAX_HEADING) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def split_sections(text: str) -> tuple[str | None, list[dict[str, Any]]]:
    """`(title, sections)`: a level-1 heading before any text is the title; each other
    heading opens a section; without headings, each paragraph is a section."""
    marks = list(HEADING.finditer(text))
    title = None
    if marks and marks[0].group(1) == "#" and not text[: marks[0].start()].strip():
        title, marks = marks[0].group(2).strip(), marks[1:]
    if marks:
        out = []
        for i, m in enumerate(marks):
            body = text[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(text)].strip()
            out.append({"heading": _cut(m.group(2)), "text": body})
        return title, out
    body = text if title is None else HEADING.sub("", text, count=1)
    return title, [{"heading": _cut((sentences(p) or [p])[0]), "text": p} for p in paragraphs(body)]


@handler(engine="content", operation="outline")
async def outline(ctx: JobContext) -> dict:
    """Sections of `text` (or the parents' text): `{title, sections: [{heading, text, words}],
    count}`, at most `max_sections` (default 100) of them."""
    text = text_input(ctx)
    if len(text) > MAX_CHARS:
        raise _bad("text", f"must be at most {MAX_CHARS} characters")
    cap = ctx.params.get("max_sections", 100)
    if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_SECTIONS:
        raise _bad("max_sections", f"must be an integer between 1 and {MAX_SECTIONS}")
    found_title, sections = await asyncio.to_thread(split_sections, text)
    if not sections:
        raise _bad("text", "has no paragraph to outline")
    sections = [{**s, "words": len(words(s["text"]))} for s in sections[:cap]]
    await ctx.progress(100, stage="done")
    return {"title": _title(ctx) or found_title, "sections": sections, "count": len(sections)}


def _pieces(result: Any) -> list[dict]:
    """The (heading, text) pieces one parent gives: a map's list gives one per item."""
    if isinstance(result, list):
        return [p for r in result for p in _pieces(r)]
    if not isinstance(result, dict):
        return []
    text = next((result[f] for f in TEXT_FIELDS if isinstance(result.get(f), str)), None)
    heading = result.get("heading") if isinstance(result.get("heading"), str) else None
    return [{"heading": heading, "text": text}] if text is not None else []


@handler(engine="content", operation="assemble")
async def assemble(ctx: JobContext) -> dict:
    """A Markdown draft of the parents' pieces, under `title`: `{text, title, sections, words}`."""
    title = _title(ctx)
    pieces = [p for _, result in ctx.parents.items() for p in _pieces(result)]
    if not pieces:
        raise _bad("parents", "none of this step's parents gave a text to assemble")
    parts = [f"# {title}"] if title else []
    for p in pieces:
        parts += ([f"## {p['heading']}"] if p["heading"] else []) + [p["text"].strip()]
    text = "\n\n".join(parts) + "\n"
    await ctx.progress(100, stage="done")
    return {"text": text, "title": title, "sections": len(pieces), "words": len(words(text))}
