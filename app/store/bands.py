"""Bands, the per-(priority, tenant, lane) lines of an engine, as its document records them:
their keys, which of them have claimable work (`busy_bands`), which are held by provider
back-pressure (`held_until`), whose tenant has reached its cost budget (`budget_hold`), which
lanes' limit keys are at their limit (`key_block`), and when the engine's or a key's rate
limit has its next token (`next_token_at`). Pure functions of an engine document
(app/store/engines.py). Lanes: app/domain/limitkeys.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ..domain.limitkeys import lane_base

DEFAULT_TENANT = "default"


def band(priority: int, tenant: str = DEFAULT_TENANT, lane: int = 0) -> str:
    """The key of a (priority, tenant, lane) band: `pN`, `pN:<tenant>`, then `~<lane>` for a
    limit key's lane. Tenant names are letters, digits, `_` and `-`."""
    head = f"p{priority}" if tenant == DEFAULT_TENANT else f"p{priority}:{tenant}"
    return f"{head}~{lane}" if lane else head


def parse_band(key: str) -> tuple[int, str]:
    p, _, tenant = key[1:].partition("~")[0].partition(":")
    return int(p), tenant or DEFAULT_TENANT


def band_lane(key: str) -> int:
    return int(key.partition("~")[2] or 0)


def band_floor(key: str) -> int:
    """The lowest seq of a band: where its cursor starts."""
    return lane_base(band_lane(key))


def tenant_key(tenant: str) -> str:
    """The back-pressure key of a tenant's bands (`RateLimited(key=...)`)."""
    return f"tenant:{tenant}"


def held_until(engine: dict, tenant: str | None, now: datetime) -> tuple[datetime, str | None] | None:
    """`(until, key)` when provider back-pressure holds the engine (key None) or, for
    `tenant`, its tenant key, at `now`; the later one when both do. None when nothing does."""
    holds = []
    whole = engine.get("held_until")
    if whole is not None and _aware(whole) > now:
        holds.append((_aware(whole), None))
    if tenant is not None:
        key = tenant_key(tenant)
        mine = (engine.get("held_keys") or {}).get(key)
        if mine is not None and _aware(mine) > now:
            holds.append((_aware(mine), key))
    return max(holds, key=lambda h: h[0]) if holds else None


def budget_hold(engine: dict, tenant: str | None, now: datetime) -> dict | None:
    """`{until, period, key}` when `tenant` has reached its cost budget (app/store/budgets.py):
    its bands on this engine wait until `until`, the end of the reached period. An expired
    hold is inert, so a period's rollover lifts it without a write."""
    hold = (engine.get("budget_held") or {}).get(tenant) if tenant is not None else None
    if hold is None or _aware(hold["until"]) <= now:
        return None
    return {**hold, "until": _aware(hold["until"])}


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def busy_bands(engine: dict, *, paused_too: bool = False, now: datetime | None = None):
    """`(band, priority, tenant, cursor, next_seq)` for each band of an engine document that
    may hold queued jobs, highest priority first; the bands of paused tenants, and of those
    held by back-pressure or a reached budget at `now` (default: this machine's clock), only
    with `paused_too`."""
    cursors, seqs = engine.get("cursor") or {}, engine.get("seq") or {}
    paused = {} if paused_too else engine.get("paused_tenants") or {}
    holds = not paused_too and (engine.get("held_until") is not None or engine.get("held_keys"))
    budgets = not paused_too and engine.get("budget_held")
    keyed = not paused_too and engine.get("lanes")
    now = now or datetime.now(UTC)
    for key in sorted(seqs, key=lambda k: (parse_band(k)[0], k)):
        floor = band_floor(key)
        lo, hi = cursors.get(key, floor), seqs.get(key, floor)
        p, tenant = parse_band(key)
        if (
            lo < hi
            and tenant not in paused
            and not (holds and held_until(engine, tenant, now))
            and not (budgets and budget_hold(engine, tenant, now))
            and not (keyed and key_block(engine, band_lane(key), now))
        ):
            yield key, p, tenant, lo, hi


def next_hold_end(engine: dict, now: datetime) -> datetime | None:
    """When the earliest hold of the engine that is still on ends, or its empty rate bucket
    (or that of a limit key with queued jobs) has a token again (a worker waits no longer)."""
    ends = [_aware(engine["held_until"])] if engine.get("held_until") is not None else []
    ends += [_aware(at) for at in (engine.get("held_keys") or {}).values()]
    ends += [_aware(h["until"]) for h in (engine.get("budget_held") or {}).values()]  # a period's rollover
    ends += [at] if (at := next_token_at(engine, now)) else []  # the rate limit's next token
    if engine.get("key_rate_per_s"):
        cursors, seqs = engine.get("cursor") or {}, engine.get("seq") or {}
        waiting = {band_lane(k) for k, hi in seqs.items() if cursors.get(k, band_floor(k)) < hi}
        ends += [at for lane in waiting - {0} if (at := next_token_at(engine, now, lane))]
    ends = [at for at in ends if at > now]
    return min(ends) if ends else None


def _bucket(engine: dict, lane: int) -> tuple[float | None, float, float | None, datetime | None]:
    """`(per_s, burst, tokens, at)` of the engine's bucket (lane 0) or a limit key's."""
    if not lane:
        return engine.get("rate_per_s"), engine.get("burst") or 1, engine.get("rate_tokens"), engine.get("rate_at")
    state = (engine.get("keys") or {}).get(f"k{lane}") or {}
    return engine.get("key_rate_per_s"), engine.get("key_burst") or 1, state.get("tokens"), state.get("at")


def rate_tokens(engine: dict, now: datetime, lane: int = 0) -> float | None:
    """The tokens in the engine's rate bucket (or, for a lane, its limit key's) at `now`
    (None: no rate), refilled as the draws in app/store/permits.py and keylimits.py do."""
    per_s, burst, tokens, at = _bucket(engine, lane)
    if not per_s:
        return None
    if tokens is None or at is None:
        return float(burst)
    return min(float(burst), tokens + max(0.0, (now - _aware(at)).total_seconds()) * per_s)


def next_token_at(engine: dict, now: datetime, lane: int = 0) -> datetime | None:
    """When the bucket next holds a whole token, if it holds none at `now`."""
    tokens = rate_tokens(engine, now, lane)
    if tokens is None or tokens >= 1:
        return None
    return now + timedelta(seconds=(1 - tokens) / _bucket(engine, lane)[0])


def key_running(engine: dict, lane: int) -> int:
    return ((engine.get("keys") or {}).get(f"k{lane}") or {}).get("running", 0)


def key_block(engine: dict, lane: int, now: datetime) -> dict | None:
    """What keeps a lane's limit key from starting a job at `now`: `{limit: "concurrency"}`,
    `{limit: "rate", next_slot_at}` or `{limit: "held", until}` (provider back-pressure on
    the key); None when it may start one (lane 0 never has a key)."""
    if not lane:
        return None
    cap = engine.get("key_concurrency")
    if cap and key_running(engine, lane) >= cap:
        return {"limit": "concurrency", "running": key_running(engine, lane), "max": cap}
    if (at := next_token_at(engine, now, lane)) is not None:
        return {"limit": "rate", "next_slot_at": at}
    held = (engine.get("held_keys") or {}).get(lane_hold_key(lane))
    if held is not None and _aware(held) > now:
        return {"limit": "held", "until": _aware(held)}
    return None


def lane_hold_key(lane: int) -> str:
    """The back-pressure key of a limit key's lane (`RateLimited(key="key")`)."""
    return f"lane:{lane}"
