"""Map steps, the pure part: the `map_over` path (`"<parent key>.<path to a list>"`), how it
is checked at submit, how it is followed through a parent's result, and how a mapped
child is named. No I/O; the store's side is app/store/mapsteps.py.

A path is the key of a step the map step depends on, then zero or more segments separated
by dots. Each segment is a key of an object, or the index of a list item (a number, from
0). `"outline"` maps over the parent's whole result (itself a list); `"outline.sections"`
over its `sections` field; `"fetch.pages.0.rows"` over the rows of its first page.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ValidationFailed

MAX_SEGMENTS = 16
MAX_PATH = 500
# A step key (app/domain/workflow.py KEY_PATTERN), then segments. A result's keys may not
# hold a dot (app/domain/userjson.py), so a dot always separates two segments.
SEGMENT = r"[^.\s$][^.\s]{0,99}"
PATH = re.compile(rf"^(?P<key>[A-Za-z0-9_][A-Za-z0-9_-]{{0,63}})(?P<rest>(\.{SEGMENT}){{0,{MAX_SEGMENTS}}})$")
RESERVED_PARAMS = ("item", "index")  # what each mapped child is given, besides the step's own


class NotMappable(Exception):
    """A parent's result has no list at the path: `code` and a message naming the path."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def split(path: str) -> tuple[str, list[str]]:
    """`(parent key, segments)`; the path was checked at submit."""
    m = PATH.match(path)
    if m is None:
        raise ValueError(f"bad map_over path {path!r}")
    rest = m["rest"]
    return m["key"], rest[1:].split(".") if rest else []


def check(i: int, key: str, path: str, depends_on: list[str], parameters: dict) -> None:
    """A step's `map_over` at submit: the syntax, a parent among its dependencies, and no
    parameter of the names its children are given. Raises ValidationFailed naming
    `jobs[i].map_over` (or `.parameters`)."""
    field = f"jobs[{i}].map_over"
    if len(path) > MAX_PATH or PATH.match(path) is None:
        raise ValidationFailed(
            f"step {key!r}: map_over must be '<parent key>' or '<parent key>.<path to a list>', with at most "
            f"{MAX_SEGMENTS} dot-separated segments (object keys, or list indices from 0)",
            field=field,
            key=key,
        )
    parent, _ = split(path)
    if parent not in depends_on:
        raise ValidationFailed(
            f"step {key!r} maps over {parent!r}, which is not in its depends_on", field=field, key=key, parent=parent
        )
    taken = [p for p in RESERVED_PARAMS if p in parameters]
    if taken:
        raise ValidationFailed(
            f"step {key!r} maps over a list: each child gets 'item' and 'index', so its parameters may not "
            f"hold {', '.join(repr(t) for t in taken)}",
            field=f"jobs[{i}].parameters",
            key=key,
        )


def resolve(path: str, result: Any, cap: int) -> list:
    """The list at `path` in the parent's `result`, at most `cap` items long. Raises
    NotMappable: `map_path_missing` (a segment leads nowhere), `map_not_a_list` (the value
    there is not a list), `map_too_large` (longer than `cap`)."""
    walked, segments = split(path)
    value = result
    for seg in segments:
        if isinstance(value, dict) and seg in value:
            value = value[seg]
        elif isinstance(value, list) and seg.isdigit() and int(seg) < len(value):
            value = value[int(seg)]
        else:
            raise NotMappable(
                "map_path_missing",
                f"map_over {path!r}: {walked} is {_kind(value)}, with no {seg!r} in it",
            )
        walked += f".{seg}"
    if not isinstance(value, list):
        raise NotMappable("map_not_a_list", f"map_over {path!r} is {_kind(value)}, not a list")
    if len(value) > cap:
        raise NotMappable(
            "map_too_large", f"map_over {path!r} is a list of {len(value)} items; a map step takes at most {cap}"
        )
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return f"an object of {len(value)} key{'' if len(value) == 1 else 's'}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def child_key(key: str, index: int) -> str:
    """A mapped child's step key, `key[index]`: brackets are not allowed in a step key a
    client gives, so it cannot collide with one, and no step can name it in depends_on."""
    return f"{key}[{index}]"
