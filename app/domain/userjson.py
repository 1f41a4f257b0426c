"""User JSON that will be stored as BSON: job and step `parameters`, workflow `metadata`,
schedule templates, handler results and progress data. One validator (`check_json`) says
what such a value may hold, so a value accepted here always stores, and reads back as it
was sent. Pure: no I/O.

The rules, each because of what the database would do otherwise:
- keys may not start with `$` or contain `.` or NUL: MongoDB would read them as operators
  or paths, so stored user data could be interpreted;
- integers fit in a signed 64-bit int: BSON has no larger integer, and a double would
  silently lose digits;
- numbers are finite: JSON has no NaN or Infinity, so such a value could not be answered;
- no lone UTF-16 surrogate (JSON's `"\\udfff"`) in a key or a string: BSON strings are
  UTF-8, which cannot encode one;
- nesting is at most `MAX_DEPTH` levels deep.

Errors name where the problem is (a path of keys and indices) and the rule, never the value.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

MAX_DEPTH = 32
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_LABEL = 64  # longest key shown in an error's field path


class BadUserJSON(ValueError):
    """`path` (keys and list indices below `root`) breaks `reason`."""

    def __init__(self, root: str, path: list[str | int], reason: str) -> None:
        self.root, self.path, self.reason = root, path, reason
        super().__init__(f"{field_path([root, *path])}: {reason}")


def label(part: str | int) -> str:
    """A key as it may appear in a field path: UTF-8-safe, printable and short (a key is
    a field's name, shown to name it; it is cut so a huge key is not echoed whole)."""
    if isinstance(part, int):
        return str(part)
    text = part.encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= MAX_LABEL else text[:MAX_LABEL] + "…"


def field_path(parts) -> str:
    return ".".join(label(p) for p in parts)


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_json(value: Any, root: str = "parameters") -> None:
    """Raise `BadUserJSON` (a ValueError) at the first part of `value` that could not be
    stored as BSON and read back unchanged."""
    # Iterative, so a value nested deeper than Python's recursion limit is refused cleanly.
    todo: list[tuple[Any, list[str | int]]] = [(value, [])]
    while todo:
        v, path = todo.pop()
        if len(path) > MAX_DEPTH:
            raise BadUserJSON(root, path[:MAX_DEPTH], f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(v, dict):
            for k, child in v.items():
                if not isinstance(k, str):
                    raise BadUserJSON(root, path, "keys must be strings")
                where = [*path, k]
                if k.startswith("$") or "." in k or "\x00" in k:
                    raise BadUserJSON(root, where, "a key may not start with '$' or contain '.' or NUL")
                if _has_surrogate(k):
                    raise BadUserJSON(root, where, "a key may not hold a lone UTF-16 surrogate")
                todo.append((child, where))
        elif isinstance(v, (list, tuple)):
            todo.extend((child, [*path, i]) for i, child in enumerate(v))
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            if not INT64_MIN <= v <= INT64_MAX:
                raise BadUserJSON(root, path, "integers must fit in a signed 64-bit integer (-2**63 to 2**63-1)")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise BadUserJSON(root, path, "numbers must be finite (no NaN or Infinity)")
        elif isinstance(v, str):
            if _has_surrogate(v):
                raise BadUserJSON(root, path, "a string may not hold a lone UTF-16 surrogate")


def _checked(v: Any) -> Any:
    try:
        check_json(v, "value")
    except BadUserJSON as exc:
        # app/api/errors.py appends `path` to the field's location, so the error names the
        # exact key or index.
        raise PydanticCustomError("user_json", "{reason}", {"reason": exc.reason, "path": exc.path}) from None
    return v


UserDict = Annotated[dict[str, Any], AfterValidator(_checked)]
"""A field holding user JSON: a JSON object that `check_json` accepts."""
