"""Webhooks: the channel that turns events into deliveries, the sender that sends them, and
their signature (docs/webhooks.md).

- `WebhookChannel` is fed every batch of the event log by the notifier
  (app/notifications/service.py) and writes one delivery per (event, matching webhook) to
  the outbox (app/store/webhook_deliveries.py). Delivery ids are `<seq>:<webhook id>`, so a
  batch the notifier replays after a crash writes nothing twice.
- `WebhookSender` drains the outbox. Like the Mailer, one runs in every `serve` process
  that runs the live loops; each delivery is claimed under a lease token first, so one
  process at a time sends it, and a dead process's deliveries are taken back after their
  lease. Up to `webhook_concurrency` go out at once, so one slow receiver does not hold up
  the others.

Each attempt checks the webhook's host again with the http_request handler's SSRF guard
(`handlers.general.check_address`, whose allow-list is `SWITCHYARD_HTTP_ALLOWLIST`), since
DNS may have changed since registration, and connects to the address it checked (never
resolving the name again: DNS rebinding), follows no redirect and uses no proxy from the
environment. A 2xx is delivered; any other answer, a time-out or a connection error is a
failed try.

The secret signs each attempt and goes nowhere else: no log line, no answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import json
import logging
import time
from collections import defaultdict
from datetime import timedelta

import httpx

from handlers.general import ServiceUnavailable, check_address

from .. import PermanentError, metrics
from ..domain.events import public
from ..errors import LeaseLost
from ..logs import get_logger
from ..store.webhook_deliveries import DeliveryState, delivery_id

USER_AGENT = "Switchyard-Webhooks/1"
_SENDING = contextvars.ContextVar("webhook_sending", default=False)


class _QuietRequests(logging.Filter):
    """Drops httpx's own line about a delivery's request: it names the URL, which may be a
    credential itself (many receivers put a token in the path). `webhook.*` lines say what
    happened instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _SENDING.get()


logging.getLogger("httpx").addFilter(_QuietRequests())


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Switchyard-Signature` header's value: `v1=` and the hex HMAC-SHA256, keyed
    with the secret, of `<timestamp>.<body>`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def body_of(event: dict) -> str:
    """A delivery's body: the event as clients see it everywhere (`seq`, ISO times)."""
    return json.dumps(public(event), separators=(",", ":"), sort_keys=True, default=str)


def matches(hook: dict, event: dict) -> bool:
    """Whether `hook` (already known to be of the event's tenant) wants `event`."""
    return event["_id"] > hook.get("since_seq", 0) and ("*" in hook["events"] or event["type"] in hook["events"])


class WebhookChannel:
    """Writes deliveries to the outbox; the WebhookSender sends them. Unlike the other
    channels it takes whole events, not per-user notices: a webhook is a tenant's."""

    name = "webhook"

    def __init__(self, store, wake: asyncio.Event | None = None) -> None:
        self.store, self.wake = store, wake

    async def deliver_events(self, events: list[dict]) -> None:
        if not events:
            return
        hooks: dict[str, list[dict]] = defaultdict(list)
        for hook in await self.store.webhooks.subscriptions():
            hooks[hook["tenant"]].append(hook)
        if not hooks:
            return
        deliveries = [
            {
                "_id": delivery_id(e["_id"], hook["_id"]),
                "webhook_id": hook["_id"],
                "tenant": hook["tenant"],
                "seq": e["_id"],
                "event_type": e["type"],
                "body": body_of(e),
            }
            for e in events
            if e.get("owner")  # an event of no one's job belongs to no tenant's webhooks
            for hook in hooks.get(e.get("tenant"), ())
            if matches(hook, e)
        ]
        added = await self.store.webhook_deliveries.enqueue(deliveries)
        if added:
            metrics.WEBHOOK_DELIVERIES_CREATED.inc(added)
            if self.wake:
                self.wake.set()


class DeliveryFailed(Exception):
    """An attempt that got no answer: why, as recorded in the delivery's log."""


class WebhookSender:
    """Sends what the outbox holds. Any number may run: each delivery is claimed first."""

    def __init__(self, store, settings) -> None:
        self.store, self.settings = store, settings
        self.stopping = False  # set before cancelling: the driver may turn a cancel into an error
        self.wake = asyncio.Event()
        self.inflight: set[asyncio.Task] = set()
        self.log = get_logger("switchyard.webhooks")  # now, not at import: the configuration may change

    @property
    def lease_seconds(self) -> float:
        # An attempt is bounded by the time-out (DNS included); the rest covers the writes.
        return self.settings.webhook_timeout_seconds * 2 + 30

    async def run(self) -> None:
        room = self.settings.webhook_concurrency
        claim = True  # the first pass looks, then only when something is due or we are woken
        try:
            while not self.stopping:
                self.wake.clear()
                batch = []
                try:
                    if claim:
                        batch = await self.store.webhook_deliveries.claim_due(
                            room - len(self.inflight), self.lease_seconds
                        )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.log.warning("webhooks.error", error=repr(exc))
                for d in batch:
                    task = asyncio.create_task(self.attempt(d), name=f"webhook-{d['_id']}")
                    self.inflight.add(task)
                    task.add_done_callback(self.inflight.discard)
                if batch and len(self.inflight) < room:
                    continue  # more may be due now
                claim = await self._idle()
        finally:
            for task in list(self.inflight):  # theirs are taken back after their lease
                task.cancel()

    async def _idle(self) -> bool:
        """Until woken (new deliveries from this process), a slot frees, or the outbox's
        next due delivery (a back-off, a sender's lease), at most `outbox_check_seconds`:
        deliveries another process adds are found then. Says whether to claim: not after a
        full rest with nothing due in it, so an idle outbox costs one read of when its next
        delivery is due per rest (the claim's reads only run when they can find something)."""
        rest, now = self.settings.outbox_check_seconds, self.store.clock.now()
        due = False
        try:
            if (nxt := await self.store.webhook_deliveries.next_due(now + timedelta(seconds=rest))) is not None:
                rest, due = min(rest, max(0.0, (nxt - now).total_seconds()) + 0.01), True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.warning("webhooks.error", error=repr(exc))
            rest, due = 1.0, True
        wake = asyncio.ensure_future(self.wake.wait())
        try:
            done, _ = await asyncio.wait(
                {wake, *self.inflight},
                timeout=rest,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            wake.cancel()
        return due or bool(done)

    async def attempt(self, d: dict) -> None:
        _SENDING.set(True)  # this task's own context: see _QuietRequests
        try:
            await self._attempt(d)
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            self.log.warning("webhook.lease_lost", delivery_id=d["_id"], tries=d["tries"])
        except Exception as exc:  # a database error: the delivery is taken back after its lease
            self.log.warning("webhooks.error", delivery_id=d["_id"], error=repr(exc))

    async def _attempt(self, d: dict) -> None:
        hooks, outbox = self.store.webhooks, self.store.webhook_deliveries
        hook = await hooks.by_id(d["webhook_id"])
        if hook is None:
            await outbox.discard(d["_id"], d["token"])
            return
        if hook["paused"]:
            await outbox.hold(d["_id"], d["token"])
            # A resume between the read above and the hold released the held deliveries
            # before this one was held: look again, so this one cannot wait forever.
            again = await hooks.by_id(hook["_id"])
            if again is not None and not again["paused"]:
                await outbox.release_held(hook["_id"])
            return
        at, start = self.store.clock.now(), time.monotonic()
        status_code, error = None, None
        try:
            status_code = await self.post(hook, d)
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}" + (" (redirects are not followed)" if 300 <= status_code < 400 else "")
        except DeliveryFailed as exc:
            error = str(exc)
        except Exception as exc:  # whatever stopped the request is this try's failure
            error = f"{type(exc).__name__}: {exc}"
        seconds = time.monotonic() - start
        metrics.WEBHOOK_ATTEMPT_SECONDS.observe(seconds)
        attempt = {"at": at, "status_code": status_code, "error": error, "duration_ms": round(seconds * 1000, 1)}
        fields = {
            "delivery_id": d["_id"],
            "webhook_id": hook["_id"],
            "tenant": hook["tenant"],
            "event_type": d["event_type"],
            "tries": d["tries"],
            "status_code": status_code,
            "duration_ms": attempt["duration_ms"],
        }
        if error is None:
            await outbox.delivered(d["_id"], d["token"], attempt)
            metrics.WEBHOOK_ATTEMPTS.labels(outcome="delivered").inc()
            metrics.NOTIFICATIONS_SENT.labels(channel="webhook").inc()
            self.log.info("webhook.delivered", **fields)
            return
        state = await outbox.failed(d["_id"], d["token"], attempt, d["tries"])
        dead = state is DeliveryState.DEAD
        metrics.WEBHOOK_ATTEMPTS.labels(outcome="dead" if dead else "retry").inc()
        (self.log.error if dead else self.log.warning)("webhook.failed", **fields, error=error[:300], next=state.value)

    async def post(self, hook: dict, d: dict) -> int:
        """One signed POST of the delivery's body; the answer's status code."""
        timeout = self.settings.webhook_timeout_seconds
        try:
            async with asyncio.timeout(timeout):  # the address check's DNS lookup included
                return await self._post(hook, d, timeout)
        except TimeoutError:
            raise DeliveryFailed(f"timed out after {timeout:g} s") from None

    async def _post(self, hook: dict, d: dict, timeout: float) -> int:
        url = httpx.URL(hook["url"])
        host = url.raw_host.decode("ascii")  # IDNA-encoded, no brackets
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addrs = await check_address(host, port)
        except PermanentError as exc:
            raise DeliveryFailed(f"refused: {exc.message}") from None
        except ServiceUnavailable as exc:
            raise DeliveryFailed(str(exc)) from None
        body = d["body"].encode()
        timestamp = int(time.time())
        headers = {
            "Host": url.netloc.decode("ascii"),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Switchyard-Timestamp": str(timestamp),
            "Switchyard-Signature": sign(hook["secret"], timestamp, body),
            "Switchyard-Delivery": d["_id"],
            "Switchyard-Event": d["event_type"],
        }
        # Pinned to the checked address, as http_request is: the URL's host becomes the IP,
        # Host keeps the name, and for https SNI and the certificate check use the name.
        target = url.copy_with(host=str(addrs[0]))
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        # A client per attempt: a pooled connection to the same IP could carry another
        # webhook's name in its TLS session.
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=timeout) as client:
            try:
                request = client.build_request("POST", target, content=body, headers=headers, extensions=extensions)
                response = await client.send(request, stream=True)
                await response.aclose()  # the status is all we read
            except httpx.HTTPError as exc:
                raise DeliveryFailed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        return response.status_code
