"""NotificationService: reads the `events` log in order and fans each event that concerns
a user out through `Channel`s: stored notifications (`DbChannel`) and email (`EmailChannel`,
through the durable outbox). WebSocket pushes need no channel here: every API process's hub
reads the same log and pushes to its own clients (see app/notifications/hub.py). Event
channels (`EventChannel`: webhooks, app/notifications/webhooks.py) take every event of a
batch, whoever it concerns, before the per-user channels take theirs.

One service runs per deployment at a time (the `notifier` lease); its checkpoint is the seq
of the last event it fanned out, saved (at most once a second) after the channels took the
batch. It reads the log through this process's hub, so it costs no change stream of its own. Channels are
idempotent per (event, user), so a batch replayed after a crash changes nothing.

Who is notified: an event's owner, for the types in `notify_types`; the channels per type
come from the user's preferences, else `db` for all of them and `email` for `email_types`.
A failed workflow step sends no email of its own: its workflow's failure does. The address
is the owner's, else `alert_email` (app/notifications/recipients.py); an alert with neither
is counted and logged there, never dropped silently.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from .. import metrics
from ..domain.redact import redact_text
from ..leadership import Singleton
from ..store.notifications import notification_id
from .approvals import request_approvals
from .direct import DIRECT_TYPES
from .hub import Subscriber, Subscription
from .recipients import NO_RECIPIENT, NoRecipient, recipient

LEASE = "notifier"
CHANNELS = ("db", "email", "websocket")
SCHEDULE_REFUSED = "schedule.refused"  # a tick its tenant's limits refused (app/admission.py)


@dataclass(frozen=True)
class Notice:
    event: dict
    user: str
    title: str
    email: str | None = None


class Channel(Protocol):
    name: str

    async def deliver(self, notices: list[Notice]) -> None: ...


class EventChannel(Protocol):
    """A channel fed whole batches of events rather than per-user notices; idempotent per
    event, as the others are per (event, user)."""

    name: str

    async def deliver_events(self, events: list[dict]) -> None: ...


def title_of(event: dict) -> str:
    kind, _, what = event["type"].partition(".")
    label = event.get("name") or (f"{event.get('engine')}.{event.get('operation')}" if kind == "job" else "workflow")
    oid = event.get("job_id") if kind == "job" else event.get("workflow_id")
    return f"{kind.capitalize()} {what}: {label} ({oid})"


class DbChannel:
    name = "db"

    def __init__(self, store) -> None:
        self.store = store

    async def deliver(self, notices: list[Notice]) -> None:
        docs = [
            {
                "_id": notification_id(n.event["_id"], n.user),
                "user": n.user,
                "seq": n.event["_id"],
                "type": n.event["type"],
                "title": n.title,
                "job_id": n.event.get("job_id"),
                "workflow_id": n.event.get("workflow_id"),
                "status": n.event.get("status"),
                "error": n.event.get("error"),
                "read": False,
                "created_at": n.event["at"],
            }
            for n in notices
        ]
        added = await self.store.notifications.add_many(docs)
        metrics.NOTIFICATIONS_SENT.labels(channel="db").inc(added)


class EmailChannel:
    """Writes alert emails to the outbox; the Mailer sends them."""

    name = "email"

    def __init__(self, store, settings, wake: asyncio.Event | None = None) -> None:
        self.store, self.settings, self.wake = store, settings, wake

    async def deliver(self, notices: list[Notice]) -> None:
        mails = [await self.compose(n) for n in notices if n.email]
        if await self.store.mail.enqueue(mails) and self.wake:
            self.wake.set()

    async def compose(self, n: Notice) -> dict:
        e, base = n.event, self.settings.public_url.rstrip("/")
        lines = [n.title, ""]
        if e["kind"] == "job":
            job = await self.store.jobs.get(e["job_id"])
            err = job.get("last_error") or {}
            lines += [
                f"Job:       {e['job_id']}",
                f"Handler:   {job['engine']}.{job['operation']}",
                f"Status:    {job['status']}",
                f"Attempts:  {job.get('attempt', 0)}",
                f"Error:     {err.get('code', '-')}: {err.get('message', '-')}",
            ]
            for past in job.get("errors", [])[:-1][-5:]:
                lines.append(f"  earlier attempt {past.get('attempt')}: {past.get('code')}: {past.get('message')}")
            link = f"{base}/#/jobs/{e['job_id']}"
        else:
            wf = await self.store.workflows.get(e["workflow_id"])
            lines += [
                f"Workflow:  {e['workflow_id']}",
                f"Status:    {wf['status']}",
                f"Steps:     {wf.get('total', 0)}, failed {wf.get('n_failed', 0)}, "
                f"cancelled {wf.get('n_cancelled', 0)}",
            ]
            for step in await self.store.jobs.steps_of(
                e["workflow_id"], {"status": 1, "step_key": 1, "last_error": 1, "attempt": 1}
            ):
                if step["status"] == "failed":
                    err = step.get("last_error") or {}
                    lines.append(
                        f"  step {step['step_key']} failed after {step.get('attempt')} attempt(s): "
                        f"{err.get('code')}: {err.get('message')}"
                    )
            link = f"{base}/#/workflows/{e['workflow_id']}"
        lines += ["", f"Open in the dashboard: {link}"]
        return {
            "_id": notification_id(e["_id"], n.user),
            "to": n.email,
            "subject": redact_text(f"[Switchyard] {n.title}"),
            "body": redact_text("\n".join(lines) + "\n"),
            "event_type": e["type"],
        }


async def notify_schedule_refused(store, settings, schedule: dict, tick, error: dict, now) -> None:
    """Tell a schedule's owner that its tenant's limits refused a tick (`schedule.refused`).
    No job or workflow changed, so there is no event to fan out: the notification is stored
    here, idempotent per (schedule, tick), and mailed by the rule failures follow (the type
    in `email_types`, and an address). Its seq is the log's last, so it lists in time order."""
    owner, sid = schedule["owner"], schedule["_id"]
    nid = f"{int(tick.timestamp())}:{owner.replace('/', '~')}~{sid}"  # never an event's `<seq>:<user>`
    title = f"Schedule refused: {schedule.get('name')} ({sid})"
    err = {"code": error.get("code"), "message": error.get("message")}
    await store.notifications.add_many(
        [
            {
                "_id": nid,
                "user": owner,
                "seq": await store.events.last_seq(),
                "type": SCHEDULE_REFUSED,
                "title": title,
                "schedule_id": sid,
                "job_id": None,
                "workflow_id": None,
                "status": None,
                "error": err,
                "read": False,
                "created_at": now,
            }
        ]
    )
    metrics.NOTIFICATIONS_SENT.labels(channel="db").inc()
    prefs = await store.notifications.preferences(owner)
    address = recipient(prefs, settings)
    if "email" not in channels_for(settings, prefs, SCHEDULE_REFUSED):
        return
    if address is None:
        if settings.smtp_url:
            NO_RECIPIENT.suppressed(SCHEDULE_REFUSED, owner, settings)
    else:
        body = [
            title,
            "",
            f"Schedule:  {sid}",
            f"Tick:      {tick.isoformat()}",
            f"Error:     {err['code']}: {err['message']}",
            "",
            "The schedule goes on; its next tick is admitted afresh.",
            "",
            f"In the API: {settings.public_url.rstrip('/')}/api/v1/jobs/schedules/{sid}",
        ]
        await store.mail.enqueue(
            [
                {
                    "_id": nid,
                    "to": address,
                    "subject": f"[Switchyard] {title}",
                    "body": "\n".join(body) + "\n",
                    "event_type": SCHEDULE_REFUSED,
                }
            ]
        )


def _types(csv: str) -> set[str]:
    return {t.strip() for t in csv.split(",") if t.strip()}


def channels_for(settings, prefs: dict, etype: str) -> list[str]:
    """The channels an event type goes to for a user: their choice, else the defaults."""
    default = ["db", "websocket"] + (["email"] if etype in _types(settings.email_types) else [])
    return prefs.get("channels", {}).get(etype, default)


def routes_for(settings, prefs: dict, channel: str) -> set[str]:
    """The notified types that a user routes to `channel`: the events', and the direct
    notifications' (budget alerts, which are always stored: app/notifications/direct.py)."""
    return {
        t
        for t in _types(settings.notify_types) | DIRECT_TYPES | set(prefs.get("channels", {}))
        if channel in channels_for(settings, prefs, t)
    }


class NotificationService(Singleton):
    lease = LEASE

    def __init__(
        self,
        store,
        settings,
        channels: list[Channel],
        hub,
        lease_seconds: float = 10.0,
        no_recipient: NoRecipient = NO_RECIPIENT,
        event_channels: list[EventChannel] | None = None,
    ) -> None:
        super().__init__(store, lease_seconds)
        self.settings, self.hub, self.no_recipient = settings, hub, no_recipient
        self.channels = {c.name: c for c in channels}
        self.event_channels = list(event_channels or [])
        self.types = _types(settings.notify_types)
        self.position = 0
        self._saved = 0.0

    async def lead(self, state: dict) -> None:
        """Catch up from the log page by page, then follow this process's hub (which
        replays the few events between the last page and the subscription)."""
        self.position = int(state.get("seq") or 0)
        self._saved = time.monotonic()
        while page := await self.store.events.since(self.position, limit=1000):
            if not await self._take(page):
                return
        sub = Subscriber(visible=lambda e: True, max_queue=100_000)
        await self.hub.attach(sub)
        try:
            await self.hub.subscribe(sub, Subscription(all=True), self.position)
            while not sub.dropped:
                batch = [(await sub.queue.get())[0]]
                while not sub.queue.empty() and len(batch) < 1000:
                    batch.append(sub.queue.get_nowait()[0])
                if not await self._take([e for e in batch if e is not None]):
                    return
        finally:
            self.hub.detach(sub)

    async def _take(self, batch: list[dict]) -> bool:
        """Fan a batch out and keep the lease; False when the lease is lost."""
        if batch:
            await self.fan_out(batch)
            self.position = batch[-1]["_id"]
        if time.monotonic() - self._saved > 1.0:  # channels are idempotent: a replay after a crash is harmless
            if not await self.save({"seq": self.position}):
                return False
            self._saved = time.monotonic()
        return await self.keep()

    async def fan_out(self, events: list[dict]) -> None:
        for sink in self.event_channels:
            await sink.deliver_events(events)
        await request_approvals(self.store, self.settings, events)  # approvers are not the owner
        owners = sorted({e["owner"] for e in events if e.get("owner")})
        prefs = await self.store.notifications.preferences_of(owners) if owners else {}
        by_channel: dict[str, list[Notice]] = {}
        for e in events:
            pref = prefs.get(e.get("owner"), {})
            if not e.get("owner") or (e["type"] not in self.types and e["type"] not in pref.get("channels", {})):
                continue
            routes = channels_for(self.settings, pref, e["type"])
            address = recipient(pref, self.settings)
            for name in routes:
                if name == "email" and e.get("kind") == "job" and e.get("workflow_id"):
                    continue  # a step: its workflow's failure sends the email
                if name == "email" and address is None:
                    if self.settings.smtp_url and "email" in self.channels:
                        self.no_recipient.suppressed(e["type"], e["owner"], self.settings)
                    continue
                if name in self.channels:
                    by_channel.setdefault(name, []).append(
                        Notice(e, e["owner"], title_of(e), address if name == "email" else None)
                    )
        for name, notices in by_channel.items():
            await self.channels[name].deliver(notices)
