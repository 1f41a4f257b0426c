"""Limit keys (docs/limits.md, "Per-key limits"): which key of a job an engine's per-key rate
and concurrency limits count by, and the lane each key's jobs are numbered in. Pure.

A key spec is `tenant`, `owner` or `params.<path>` (one to five segments of letters, digits,
`_` and `-`). A job's key is its tenant plus the spec's value in the job, so two tenants
never share a key, whatever their parameters say (a tenant never slows another). A job
without the value has the key's empty value: such jobs share one key per tenant.

Lanes: each key gets a lane number `L` (1 and up) in its engine, and its jobs are numbered in
their own bands, `pN[:tenant]~L`, with seqs from `L << LANE_BITS`. So a band is still one
seq range, the claim window query is unchanged (no new index field), and a key at its limit
is skipped by leaving its bands alone. Lane 0 is every job of an engine without a key.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

LANE_BITS = 40  # seqs per lane: 2^40 entries into queued; lanes: up to 2^22
MAX_LANES = (1 << 22) - 1
MAX_WEIGHT = 1000.0
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
VALUE_CHARS = 200  # a key's value as shown in "why" and queue status


def parse_key_spec(spec: Any) -> str:
    """The spec, checked. ValueError says what is wrong (the API maps it to a 422 on `key`)."""
    if not isinstance(spec, str):
        raise ValueError("must be 'tenant', 'owner' or 'params.<path>'")
    if spec in ("tenant", "owner"):
        return spec
    head, _, path = spec.partition(".")
    if head != "params" or not path:
        raise ValueError(f"unknown key {spec[:60]!r}: use 'tenant', 'owner' or 'params.<path>'")
    parts = path.split(".")
    if len(parts) > 5 or not all(_SEGMENT.match(p) for p in parts):
        raise ValueError("params.<path>: one to five segments of letters, digits, '_' and '-'")
    return spec


def key_value(spec: str, job: dict) -> str:
    """The job's value for the spec, as text ("" when the job has none)."""
    if spec == "tenant":
        return ""
    if spec == "owner":
        return str(job.get("owner") or "")
    value: Any = job.get("parameters") or {}
    for part in spec.split(".")[1:]:
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


def key_id(tenant: str, spec: str, value: str) -> str:
    """The field name a key is known by in its engine's document (`lanes.<id>`)."""
    return hashlib.sha1(f"{tenant}\0{spec}\0{value}".encode()).hexdigest()[:20]


def lane_base(lane: int) -> int:
    return lane << LANE_BITS


def lane_of_seq(seq: int) -> int:
    return seq >> LANE_BITS


def check_weight(tenant: Any, weight: Any) -> float | None:
    """A tenant's weight on an engine (None removes it: weight 1). ValueError says why."""
    if weight is None:
        return None
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise ValueError(f"weights.{str(tenant)[:60]}: must be a number")
    if not 0 < weight <= MAX_WEIGHT:
        raise ValueError(f"weights.{str(tenant)[:60]}: must be above 0 and at most {MAX_WEIGHT:g}")
    return float(weight)


def shares(weights: dict[str, float], k: int, passes: dict[str, float]) -> dict[str, int]:
    """Split `k` starts between tenants by weight (stride scheduling): each start goes to the
    tenant with the lowest pass, whose pass then grows by 1/weight. `passes` is the caller's
    running state per tenant, so shares stay exact across claims of any size, even of one.
    A tenant new to `passes` starts at the lowest pass among those present (no burst)."""
    if not weights:
        return {}
    floor = min((passes[t] for t in weights if t in passes), default=0.0)
    for t in weights:
        if t not in passes or passes[t] < floor:
            passes[t] = floor
    out = dict.fromkeys(weights, 0)
    for _ in range(k):
        t = min(weights, key=lambda t: (passes[t], t))
        out[t] += 1
        passes[t] += 1.0 / weights[t]
    return out


def unspend(passes: dict[str, float], tenant: str, n: int, weight: float) -> None:
    """Starts a tenant was given but could not use (no jobs there): back to its pass."""
    if n > 0 and tenant in passes:
        passes[tenant] -= n / weight
