"""How a built-in handler finds its input: in its own parameters first, then in its parents'
results. This is what lets the built-ins compose in a workflow (render -> resize,
http_request -> summarize -> analyze) without copying data between steps by hand.

Owns the convention, the same for every built-in (docs/workflows.md, "Passing data between
steps"):

- An image handler takes `image_base64` from its parameters; without it, the image of a
  parent: a parent result's `data_base64` (what `render` and `resize` return) or
  `image_base64`. Exactly one parent may offer one, unless `input_from` names the parent.
- A text handler takes `text` from its parameters; then, in a mapped step (`map_over`), its
  `item`: a string, or an object's `text`; without either, the text of its parents: a
  parent result's `text`, else `summary` (`summarize`), else `content` (`llm.chat`), else
  `body` (`http_request`). Several parents' texts are joined, in `depends_on` order, as
  paragraphs (a blank line between).
- `input_from` (a step key, or a list of them) restricts the search to those parents.

Parameters win so that a step can always be run, or re-run, on an input of its own.
"""

from __future__ import annotations

from typing import Any

from app import JobContext, PermanentError

IMAGE_FIELDS = ("data_base64", "image_base64")
TEXT_FIELDS = ("text", "summary", "content", "body")


def _bad(field: str, reason: str) -> PermanentError:
    return PermanentError("bad_input", f"{field}: {reason}")


def _sources(ctx: JobContext) -> list[tuple[str, Any]]:
    """The parents to look in, in `depends_on` order (ctx.parents keeps it)."""
    chosen = ctx.params.get("input_from")
    if chosen is None:
        return list(ctx.parents.items())
    keys = [chosen] if isinstance(chosen, str) else chosen
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise _bad("input_from", "must be a step key or a non-empty list of step keys")
    unknown = [k for k in keys if k not in ctx.parents]
    if unknown:
        raise _bad(
            "input_from",
            f"{', '.join(unknown)} is not a completed parent of this step "
            f"(parents: {', '.join(ctx.parents) or 'none'})",
        )
    return [(k, ctx.parents[k]) for k in keys]


def _field(result: Any, names: tuple[str, ...]) -> str | None:
    if not isinstance(result, dict):
        return None
    for name in names:
        value = result.get(name)
        if isinstance(value, str):
            return value
    return None


def image_input(ctx: JobContext) -> str:
    """The base64 image this step works on: `image_base64`, else its one image parent's."""
    own = ctx.params.get("image_base64")
    if own is not None:
        if not isinstance(own, str) or not own:
            raise _bad("image_base64", "must be a non-empty base64 string")
        return own
    found = [(k, v) for k, v in ((k, _field(r, IMAGE_FIELDS)) for k, r in _sources(ctx)) if v]
    if not found:
        raise _bad(
            "image_base64",
            "is required: give it, or depend on a step whose result has "
            f"{' or '.join(IMAGE_FIELDS)} (e.g. image_generation.render)",
        )
    if len(found) > 1:
        raise _bad("input_from", f"parents {', '.join(k for k, _ in found)} each give an image; name the one to use")
    return found[0][1]


def text_input(ctx: JobContext) -> str:
    """The text this step works on: `text`, else its item's, else its parents' texts joined
    as paragraphs."""
    own = ctx.params.get("text")
    if own is not None:
        if not isinstance(own, str):
            raise _bad("text", "must be a string")
        return own
    item = ctx.params.get("item")
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return item["text"]
    if isinstance(item, str):
        return item
    texts = [t for t in (_field(r, TEXT_FIELDS) for _, r in _sources(ctx)) if t is not None]
    if not texts:
        raise _bad(
            "text",
            "is required: give it, or depend on a step whose result has "
            f"{', '.join(TEXT_FIELDS[:-1])} or {TEXT_FIELDS[-1]} (e.g. general.http_request)",
        )
    return "\n\n".join(texts)


def item_heading(ctx: JobContext) -> str | None:
    """The heading of a mapped step's item (an `outline` section), to carry into its result."""
    item = ctx.params.get("item")
    heading = item.get("heading") if isinstance(item, dict) else None
    return heading if isinstance(heading, str) else None
