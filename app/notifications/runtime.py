"""Starts and stops this process's share of the live machinery: its hub (always), and the
relay, the notifier, the mailer and the webhook sender (in `serve` processes). The relay and
the notifier run under leases, so any number of `serve` processes may start them; one works
at a time and another takes over within a lease length when it stops or dies. The mailer
and the webhook sender run in each of them, claiming each message or delivery first.
"""

from __future__ import annotations

import asyncio

from .email import Mailer
from .hub import Hub
from .recipients import NO_RECIPIENT, NoRecipient, explain
from .relay import EventRelay
from .service import DbChannel, EmailChannel, NotificationService
from .webhooks import WebhookChannel, WebhookSender


class Live:
    def __init__(
        self,
        store,
        settings,
        *,
        background: bool = True,
        lease_seconds: float = 10.0,
        no_recipient: NoRecipient = NO_RECIPIENT,
    ) -> None:
        self.store, self.settings, self.no_recipient = store, settings, no_recipient
        self.hub = Hub(store, settings)
        self.mailer = Mailer(store, settings)
        self.webhooks = WebhookSender(store, settings)
        self.relay = EventRelay(store, settings, lease_seconds=lease_seconds)
        self.notifier = NotificationService(
            store,
            settings,
            [DbChannel(store), EmailChannel(store, settings, wake=self.mailer.wake)],
            self.hub,
            lease_seconds=lease_seconds,
            no_recipient=no_recipient,
            event_channels=[WebhookChannel(store, wake=self.webhooks.wake)],
        )
        self.background = background
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        if self.background:
            for name, coro in (
                ("relay", self.relay.run()),
                ("notifier", self.notifier.run()),
                ("mailer", self.mailer.run()),
                ("webhooks", self.webhooks.run()),
            ):
                self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self) -> None:
        await self.hub.stop()
        for loop in (self.relay, self.notifier, self.mailer, self.webhooks):
            loop.stopping = True
        for t in self._tasks:
            t.cancel()
        _, stuck = await asyncio.wait(self._tasks, timeout=5) if self._tasks else (None, [])
        for t in stuck:  # a call stuck on an unreachable database: leave it behind
            t.cancel()

    async def email_status(self) -> dict:
        """The mailer's state, plus who alerts go to; `no_recipient` (with the reason) while
        alerts that had no address are recent and the mailer itself is fine."""
        status = await self.mailer.status()
        if not status["configured"]:
            return status
        status["recipient"] = explain(self.settings)
        missing = self.no_recipient.status(self.settings)
        if missing is None:
            return status
        if status["status"] == "ok":
            return {**status, **missing}
        return {**status, "suppressed": missing["suppressed"]}  # a failing server matters more
