"""Hub: this process's live subscribers (WebSocket connections and SSE streams), fed from
the `events` log.

The hub tails `events` while anyone is subscribed (`EventStore.tail`: what this process's
relay appends while it leads, else a change stream, else polling) and hands each event to
the subscribers that want it and may see it. Invariants:
- A subscriber never gets the same seq twice, and a subscription opened with `since` gets
  every matching event after it: its live events are buffered while the missed ones are
  read from the log, then the buffer is flushed past what the replay already sent.
- Memory is bounded: a subscriber whose queue (or replay buffer) is full is dropped, and
  told why; it can reconnect with `since` and lose nothing.

Notifications that no event stands behind (budget alerts, stored by worker processes) come
from the `notifications` collection instead, through `DirectPush` (app/notifications/
direct.py), which runs only while a subscriber here wants notifications.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..domain.events import public
from ..logs import get_logger
from ..tasks import halt
from .direct import DIRECT_TYPES, DirectPush

log = get_logger("switchyard.hub")


def encode(event: dict) -> str:
    return json.dumps(public(event), default=str, separators=(",", ":"))


def notification(event: dict, user: str) -> str:
    """An event as the notification it is for `user` (same id as the stored one)."""
    from ..store.notifications import notification_id
    from .service import title_of

    return json.dumps(
        {
            "type": "notification",
            "id": notification_id(event["_id"], user),
            "event_type": event["type"],
            "title": title_of(event),
            "job_id": event.get("job_id"),
            "workflow_id": event.get("workflow_id"),
            "status": event.get("status"),
            "seq": event["_id"],
        },
        separators=(",", ":"),
    )


@dataclass(eq=False)
class Subscription:
    all: bool = False
    job_id: str | None = None
    workflow_id: str | None = None
    notify: frozenset | None = None  # event types pushed as notifications to `user`
    user: str | None = None
    buffer: list | None = None  # live events held back while a replay runs

    def matches(self, event: dict) -> bool:
        if self.notify is not None:
            return event["type"] in self.notify and event.get("owner") == self.user
        if self.job_id is not None:
            return event.get("job_id") == self.job_id
        if self.workflow_id is not None:
            return event.get("workflow_id") == self.workflow_id
        return self.all

    def same(self, other: Subscription) -> bool:
        return (self.all, self.job_id, self.workflow_id, self.notify is None) == (
            other.all,
            other.job_id,
            other.workflow_id,
            other.notify is None,
        )

    def key(self, event: dict):
        """What a subscriber remembers having sent: an event, or the notification it made."""
        return event["_id"] if self.notify is None else ("n", event["_id"])

    def text(self, event: dict, shared: str | None) -> str:
        return notification(event, self.user) if self.notify is not None else shared or encode(event)


@dataclass(eq=False)
class Subscriber:
    """One client. `visible` says whether an event is the client's to see."""

    visible: Callable[[dict], bool]
    max_queue: int = 1000
    subs: list[Subscription] = field(default_factory=list)
    queue: asyncio.Queue = field(init=False)
    dropped: str | None = None
    close_code: int | None = None  # set by whoever dropped it for a reason of its own (4401)
    _sent: set = field(default_factory=set)
    _order: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(self.max_queue)

    def offer(self, event: dict, text: str | None = None, key=None) -> None:
        seq = event["_id"] if key is None else key
        if self.dropped or seq in self._sent:
            return
        try:
            self.queue.put_nowait((event, text or encode(event)))
        except asyncio.QueueFull:
            self.drop("slow client: too many undelivered events")
            return
        self._sent.add(seq)
        self._order.append(seq)
        if len(self._order) > 4 * self.max_queue:  # only seqs near a replay can come twice
            self._sent.discard(self._order.popleft())

    def drop(self, reason: str, code: int | None = None) -> None:
        if not self.dropped:
            self.dropped, self.close_code = reason, code
            while not self.queue.empty():  # release what was held; the sender wakes on the marker
                self.queue.get_nowait()
            self.queue.put_nowait((None, None))


class Hub:
    def __init__(self, store, settings) -> None:
        self.store, self.settings = store, settings
        self.subscribers: set[Subscriber] = set()
        self.position = 0  # the last seq dispatched
        self._task: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self.closed = False
        self.direct = DirectPush(self, store.notifications, getattr(store.events, "gate", None))

    async def attach(self, sub: Subscriber) -> None:
        if self.closed:
            sub.drop("server shutting down")
            return
        self.subscribers.add(sub)
        if self._task is None or self._task.done():
            # Created before any await: subscribers attaching meanwhile share this one tail.
            self._ready.clear()
            self._task = asyncio.create_task(self._run(None), name="hub")
        await self._ready.wait()

    def detach(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    async def stop(self) -> None:
        self.closed = True
        await self.direct.stop()
        await halt([self._task])
        for sub in list(self.subscribers):
            sub.drop("server shutting down")

    async def subscribe(self, sub: Subscriber, wanted: Subscription, since: int | None) -> int:
        """Add a subscription; with `since`, first replay what it missed. Returns how many
        events the replay sent."""
        if any(s.same(wanted) for s in sub.subs):
            return 0
        wanted.buffer = [] if since is not None else None
        sub.subs.append(wanted)
        if wanted.notify is not None and not wanted.notify.isdisjoint(DIRECT_TYPES):
            await self.direct.ensure()  # open before the subscription is acknowledged
        replayed = 0
        if since is not None:
            after = since
            while page := await self.store.events.since(after, job_id=wanted.job_id, workflow_id=wanted.workflow_id):
                for event in page:
                    if wanted.matches(event) and sub.visible(event):
                        sub.offer(event, wanted.text(event, None), wanted.key(event))
                        replayed += 1
                after = page[-1]["_id"]
                if sub.dropped:
                    return replayed
            held, wanted.buffer = wanted.buffer, None  # no await from here: nothing slips in
            for event, text in held:
                sub.offer(event, text, wanted.key(event))
        return replayed

    def unsubscribe(self, sub: Subscriber, wanted: Subscription) -> bool:
        before = len(sub.subs)
        sub.subs = [s for s in sub.subs if not s.same(wanted)]
        return len(sub.subs) < before

    async def _run(self, after: int | None) -> None:
        if after is None:
            try:
                after = self.position = await self.store.events.last_seq()
            finally:
                self._ready.set()  # on failure too: subscribers must not hang
        while not self.closed:
            try:
                self._ready.set()
                async for batch in self.store.events.tail(after):
                    for event in batch:
                        self.dispatch(event)
                    after = self.position = batch[-1]["_id"]
                    if not self.subscribers:
                        return  # idle: the next subscriber starts a new tail
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("hub.tail_error", error=repr(exc))
                await asyncio.sleep(1.0)

    def dispatch(self, event: dict) -> None:
        shared = None  # encoded once for every subscriber that gets the plain event
        for sub in list(self.subscribers):
            if sub.dropped:
                continue
            for s in sub.subs:
                if not s.matches(event) or not sub.visible(event):
                    continue
                text = s.text(event, shared)
                if s.notify is None:
                    shared = text
                if s.buffer is not None:
                    s.buffer.append((event, text))
                    if len(s.buffer) > sub.max_queue:
                        sub.drop("slow client: too many events during replay")
                    continue
                sub.offer(event, text, s.key(event))
