"""What keeps the live streams (app/api/live.py) honest: their credentials stay valid while
they are open, and what a client sends them is bounded before it is believed.

Credentials. A stream is let in by its token once, and then watched: one `Watch` per API
process holds every open stream of an API key or a JWT. Every
`SWITCHYARD_STREAM_RECHECK_SECONDS` (5) it reads which of those keys are still live in one
query for all of them (`KeyStore.live`) and closes the streams of the others; a JWT's
streams close at its `exp` (the watch wakes for the nearest one). Every subscription is also
checked against its key when it is asked for, so nothing is added after a revocation even
between two rechecks. Closing is `Subscriber.drop(reason, code=4401)`: the WebSocket sends
`{"type": "error", "code": "unauthorized"}` and closes with 4401, SSE sends a last `error`
event and ends. The bootstrap admin's token lives in the settings and is never watched. If
the database cannot be read, streams stay open and the next recheck tries again.

Input. Every rule answers with `ValidationFailed` (naming the field), never a 500:
- a seq (`since`, `Last-Event-ID`) is a decimal integer from 0 to 2**63 - 1 (what the
  database can compare); anything else is refused, not clamped;
- a WebSocket message holding more than `MAX_DEPTH` opening brackets is refused before it
  is parsed (its nesting can be no deeper, and no message of the protocol needs more than
  two), and so is one the parser still finds too deep: the client gets an error message,
  like a message that is not JSON, and the connection stays open;
- an auth message's token must be a string; anything else is no token at all (4401);
- query parameters other than the ones a stream knows are refused by name.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

from ..errors import ValidationFailed
from ..logs import get_logger
from ..notifications.hub import Subscriber
from .auth import Principal

log = get_logger("switchyard.streams")
UNAUTHORIZED = 4401
MAX_SEQ = 2**63 - 1
MAX_DEPTH = 32
MAX_FRAME = 64 * 1024  # a bigger message closes the WebSocket (1009), or is no auth message
SEQ = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() also takes "²"


def seq(value) -> int | None:
    """A resume point: None when absent, else an int the database can compare with."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and SEQ.fullmatch(value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ:
        return value
    raise ValidationFailed(
        f"since (or Last-Event-ID) must be an event seq: an integer from 0 to {MAX_SEQ}", field="since"
    )


def parse(raw: str):
    """A client's message as JSON, its depth bounded before the parser sees it."""
    if raw.count("[") + raw.count("{") > MAX_DEPTH:
        raise ValidationFailed(f"a message may hold at most {MAX_DEPTH} brackets", field="message")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ValidationFailed("not JSON", field="message") from None


def auth_token(raw) -> str | None:
    """The token of a first message `{"action": "auth", "token": "..."}`; None for anything else."""
    try:
        msg = parse(raw) if isinstance(raw, str) and len(raw) <= MAX_FRAME else None
    except ValidationFailed:
        return None
    token = msg.get("token") if isinstance(msg, dict) and msg.get("action") == "auth" else None
    return token if isinstance(token, str) else None


def known_query(params, *allowed: str) -> None:
    """The WebSocket's version of `strict_query`: unknown parameters are refused by name."""
    for key in params.keys():
        if key not in allowed:
            raise ValidationFailed(f"unknown query parameter {key!r}", field=key)


def _expiry(who: Principal, token: str | None) -> float | None:
    """A JWT principal's `exp`. `authenticate` has just verified the token's signature and
    claims (exp is required), so only the claim is read here."""
    if who.is_global or who.key_id is not None or not token:
        return None
    import jwt

    try:
        return float(jwt.decode(token, options={"verify_signature": False})["exp"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        return time.time()  # cannot be: refuse rather than watch nothing


class Watch:
    """This process's open streams by credential (see the module docstring)."""

    def __init__(self, store, interval: float) -> None:
        self.store, self.interval = store, interval
        self.open: dict[Subscriber, tuple[str | None, float | None]] = {}  # sub -> (key id, exp)
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def add(self, sub: Subscriber, who: Principal, token: str | None) -> None:
        entry = (who.key_id, _expiry(who, token))
        if entry == (None, None):
            return
        self.open[sub] = entry
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="stream-watch")
        else:
            self._wake.set()  # its exp may be the nearest

    def remove(self, sub: Subscriber) -> None:
        self.open.pop(sub, None)
        if not self.open and self._task is not None:
            self._task.cancel()
            self._task = None

    async def check(self, sub: Subscriber) -> bool:
        """Whether `sub`'s credential holds now (one read of its key); closes it if not."""
        if sub.dropped:
            return False
        key_id, exp = self.open.get(sub, (None, None))
        if exp is not None and exp <= time.time():
            return self._close(sub, "token expired")
        if key_id is not None and not await self.store.keys.live({key_id}):
            return self._close(sub, "API key revoked")
        return True

    def _close(self, sub: Subscriber, reason: str) -> bool:
        self.open.pop(sub, None)
        sub.drop(reason, code=UNAUTHORIZED)
        return False

    async def _run(self) -> None:
        next_check = time.monotonic() + self.interval
        while self.open:
            soonest = min((exp for _, exp in self.open.values() if exp is not None), default=None)
            delay = next_check - time.monotonic()
            if soonest is not None:
                delay = min(delay, soonest - time.time())
            if delay > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
                continue
            now = time.time()
            for sub, (_, exp) in list(self.open.items()):
                if exp is not None and exp <= now:
                    self._close(sub, "token expired")
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + self.interval
            keys = {key for key, _ in self.open.values() if key is not None}
            if not keys:
                continue
            try:
                live = await self.store.keys.live(keys)
            except Exception as exc:  # the database is away: keep the streams, try again
                log.warning("streams.recheck_failed", error=repr(exc))
                continue
            for sub, (key, _) in list(self.open.items()):
                if key is not None and key not in live:
                    self._close(sub, "API key revoked")


def watch_of(app) -> Watch:
    """The app's one `Watch`, made on first use (it runs only while streams are open)."""
    watch = getattr(app.state, "stream_watch", None)
    if watch is None:
        watch = app.state.stream_watch = Watch(app.state.store, app.state.settings.stream_recheck_seconds)
    return watch
