"""Who an alert email goes to, and what happens to an alert that has nobody to go to.

The recipient of an alert is, in order: the address the owner set in their notification
preferences (`PUT /jobs/notifications/preferences`), else `SWITCHYARD_ALERT_EMAIL`. With
neither (or an address that is not a plain `user@host`), the alert is not emailed: it is
still stored as a notification and pushed over the WebSocket.

Such an alert must not vanish silently. `NoRecipient` counts them per alert kind (event
type), logs one structured warning per kind at most every `LOG_EVERY` seconds (carrying how
many were suppressed since the last one), and tells the email probe, so `/health` shows
`"status": "no_recipient"` with the reason while suppressions are recent (`RECENT`).

The count is this process's: the notifier (one per deployment, under a lease) and the
scheduler suppress in whichever `serve` process runs them, and that process's `/health`
shows it; the warning in the log is the deployment-wide record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..logs import get_logger
from .email import valid_address

LOG_EVERY = 600.0  # seconds between warnings for one alert kind
RECENT = 3600.0  # seconds a suppression keeps /health at "no_recipient"


def recipient(prefs: dict, settings) -> str | None:
    """The address an alert for a user with these preferences goes to, or None."""
    address = prefs.get("email") or settings.alert_email
    return address if valid_address(address) else None


def explain(settings) -> str:
    """The recipient rule as configured, for `/health`."""
    if settings.alert_email:  # not the address itself: anyone may read /health
        return "the owner's own address, else SWITCHYARD_ALERT_EMAIL"
    return "the owner's own address only (SWITCHYARD_ALERT_EMAIL is unset)"


@dataclass
class _Kind:
    total: int = 0
    unlogged: int = 0
    logged_at: float | None = None
    last_at: float = 0.0
    last_owner: str = ""


@dataclass
class NoRecipient:
    """Alerts that would have been emailed but had no address, per alert kind."""

    clock: callable = time.monotonic
    kinds: dict[str, _Kind] = field(default_factory=dict)

    def suppressed(self, kind: str, owner: str, settings) -> None:
        k = self.kinds.setdefault(kind, _Kind())
        now = self.clock()
        k.total += 1
        k.unlogged += 1
        k.last_at, k.last_owner = now, owner
        if k.logged_at is None or now - k.logged_at >= LOG_EVERY:
            log = get_logger("switchyard.notifications")  # now, not at import: the configuration may change
            log.warning(
                "email.no_recipient",
                alert=kind,
                owner=owner,
                suppressed=k.unlogged,
                suppressed_total=k.total,
                reason=self.reason(settings),
                fix="set SWITCHYARD_ALERT_EMAIL, or the owner's address in their notification preferences",
            )
            k.logged_at, k.unlogged = now, 0

    def reason(self, settings) -> str:
        if settings.alert_email:
            return "the owner's address is not a valid address"
        return "the owner set no email address and SWITCHYARD_ALERT_EMAIL is unset"

    def recent(self) -> dict[str, int]:
        """Per alert kind, the suppressions so far, for kinds suppressed within `RECENT`."""
        now = self.clock()
        return {kind: k.total for kind, k in sorted(self.kinds.items()) if now - k.last_at < RECENT}

    def status(self, settings) -> dict | None:
        """The probe's fields when alerts were suppressed recently, else None."""
        recent = self.recent()
        if not recent:
            return None
        kinds = ", ".join(f"{n} {kind}" for kind, n in recent.items())
        return {
            "status": "no_recipient",
            "suppressed": recent,
            "reason": f"alerts with no recipient were not emailed ({kinds}): {self.reason(settings)}",
        }

    def clear(self) -> None:
        self.kinds.clear()


NO_RECIPIENT = NoRecipient()  # this process's; the notifier and the scheduler both report here
