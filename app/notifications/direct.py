"""Direct notifications: those stored with no event behind them, or for someone else than
the event's owner (`budget.warning` and `budget.reached`, app/notifications/budget.py;
`approval.requested`, app/notifications/approvals.py), and how every API process pushes
them to its WebSocket clients.

A job's or workflow's notification reaches the WebSocket from the `events` log, which every
hub tails. A direct one has no event, and the process that stores it (a worker, charging an
attempt's cost) has no hub and is usually not the process the user is connected to. So the
database carries it across: each hub follows the inserts of these types into `notifications`
through one change stream of its own (`DirectPush`), and hands each to the subscribers that
want it, exactly like a notification made from an event.

Invariants:
- The stream is open only while one of this process's clients holds a `notifications`
  subscription; it waits on the server (`max_await_time_ms`), so an idle one costs a round
  trip a second, and the last client leaving closes it within about that. No polling.
- It is open before a subscription is acknowledged: a notification stored after the
  `subscribed` reply is pushed; one stored before is in `GET /jobs/notifications`, which a
  client reads after subscribing (the dashboard does). There is no `since` replay for these.
- A push carries the stored notification's id, so a client that also read it over REST lists
  it once, and the hub never sends one id twice on a connection.
- A stream that breaks is reopened after its resume token, so nothing stored meanwhile is
  lost (unless the server's log no longer reaches back: then from now on).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing

from ..logs import get_logger
from ..store.feed import HistoryLost
from ..tasks import halt

log = get_logger("switchyard.hub")

BUDGET_WARNING = "budget.warning"  # 80 % of a period's budget spent
BUDGET_REACHED = "budget.reached"  # 100 %: the tenant's queued jobs wait
APPROVAL_REQUESTED = "approval.requested"  # an approver is asked (app/notifications/approvals.py)
DIRECT_TYPES = frozenset({BUDGET_WARNING, BUDGET_REACHED, APPROVAL_REQUESTED})


def message(doc: dict) -> str:
    """A stored direct notification as the WebSocket's `notification` message: the fields of
    one made from an event (docs/events.md), plus its `budget` details."""
    return json.dumps(
        {
            "type": "notification",
            "id": doc["_id"],
            "event_type": doc["type"],
            "title": doc.get("title"),
            "job_id": doc.get("job_id"),
            "workflow_id": doc.get("workflow_id"),
            "status": doc.get("status"),
            "seq": doc.get("seq"),
            "budget": doc.get("budget"),
            "step_key": doc.get("step_key"),
        },
        default=str,
        separators=(",", ":"),
    )


class DirectPush:
    """One process's follower of direct notifications, feeding its hub's subscribers."""

    def __init__(self, hub, notifications, gate=None, max_await_ms: int = 1000, min_interval: float = 0.25) -> None:
        self.hub, self.notifications, self.gate = hub, notifications, gate
        self.max_await_ms, self.min_interval = max_await_ms, min_interval
        self._task: asyncio.Task | None = None  # the follower that serves new subscriptions
        self._tasks: set[asyncio.Task] = set()  # and any still closing its stream
        self._ready = asyncio.Event()
        self.pushed = 0

    def wanted(self) -> bool:
        """Whether any client of this process subscribed to notifications of these types."""
        return any(
            s.notify is not None and not s.notify.isdisjoint(DIRECT_TYPES)
            for sub in self.hub.subscribers
            if not sub.dropped
            for s in sub.subs
        )

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def ensure(self) -> None:
        """Start following (if not already) and return once the stream is open."""
        if self.hub.closed:
            return
        if not self.running:
            # Created before any await: subscriptions made meanwhile share this follower.
            self._ready.clear()
            self._task = asyncio.create_task(self._run(), name="hub-direct")
            self._tasks.add(self._task)
            self._task.add_done_callback(self._tasks.discard)
        await self._ready.wait()

    async def stop(self) -> None:
        await halt(list(self._tasks))
        self._task = None

    async def _run(self) -> None:
        me = asyncio.current_task()
        token, backoff = None, 1.0
        while True:
            try:
                feed = self.notifications.inserted(
                    DIRECT_TYPES, token, max_await_ms=self.max_await_ms, min_interval=self.min_interval, gate=self.gate
                )
                async with aclosing(feed):  # leaving closes the stream at once
                    async for docs, at in feed:
                        self._ready.set()  # (the first, empty, batch: the stream is open)
                        backoff = 1.0
                        token = at or token
                        self.dispatch(docs)
                        if not self.wanted():
                            # Given up before the stream closes (an await): a subscription
                            # made from here on starts a follower of its own.
                            if self._task is me:
                                self._task = None
                            return
            except asyncio.CancelledError:
                raise
            except HistoryLost as exc:
                log.error("hub.direct_history_lost", error=str(exc), action="following from now")
                token = None
            except Exception as exc:
                backoff = await self._failed(exc, backoff)

    async def _failed(self, exc: Exception, backoff: float) -> float:
        log.warning("hub.direct_error", error=repr(exc), retry_in=backoff)
        self._ready.set()  # subscribers must not hang on a server without change streams
        await asyncio.sleep(backoff)
        return min(backoff * 2, 30.0)

    def dispatch(self, docs: list[dict]) -> None:
        for doc in docs:
            user = doc.get("user")
            # What the hub's subscribers know how to hold: the key they remember it by is
            # ("n", <notification id>), never an event's seq.
            item = {"_id": doc["_id"], "type": doc.get("type"), "owner": user}
            text = None
            for sub in list(self.hub.subscribers):
                if sub.dropped or not sub.visible(item):
                    continue
                for s in sub.subs:
                    if s.notify is None or item["type"] not in s.notify or s.user != user:
                        continue
                    text = text or message(doc)
                    if s.buffer is not None:  # a replay of events is running: after it, in order
                        s.buffer.append((item, text))
                        if len(s.buffer) > sub.max_queue:
                            sub.drop("slow client: too many events during replay")
                        continue
                    sub.offer(item, text, s.key(item))
                    self.pushed += 1
