"""Rate specs of the engines' rate limits (docs/limits.md, "Rate limits"): `N/s`, `N/min`,
`N/h` parsed to starts per second, and the default burst. Pure; shared by the API's body,
the settings and the store."""

from __future__ import annotations

import math
import re

UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}
MAX_BURST = 100_000
DEFAULT_BURST_CAP = 100  # a burst left out is one period's worth, at most this many starts
_SPEC = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*([a-z]+)\s*$")


def parse_rate(spec: str) -> tuple[float, float]:
    """`(n, per_second)` of a spec such as `60/min`. ValueError names what is wrong."""
    if not isinstance(spec, str):
        raise ValueError("must be a string such as '60/min'")
    m = _SPEC.match(spec)
    if m is None:
        raise ValueError("must be N/s, N/min or N/h with N a number, such as '60/min'")
    n, unit = float(m.group(1)), m.group(2)
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit[:10]!r}: use s, min or h")
    if not math.isfinite(n) or n <= 0:
        raise ValueError("must be above zero")
    per_s = n / UNITS[unit]
    if per_s > 1_000_000:
        raise ValueError("must be at most 1000000/s")
    return n, per_s


def default_burst(n: float) -> int:
    """A period's worth of starts, at least 1 and at most DEFAULT_BURST_CAP."""
    return max(1, min(int(n), DEFAULT_BURST_CAP))


def normalize(spec: str) -> str:
    n, _ = parse_rate(spec)
    unit = _SPEC.match(spec).group(2)
    return f"{n:g}/{unit}"
