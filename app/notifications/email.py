"""Email: building alert messages safely, and the Mailer that drains the outbox over SMTP
(aiosmtplib) with retry and backoff.

Header safety: every header value that carries user input (a job's name, an address) has
its control characters removed before it reaches `EmailMessage`, so a name containing
CR/LF cannot add a header.

RFC 5322: every message carries `Date` (when the alert was written to the outbox, in UTC,
so a retry keeps it) and `Message-ID`. The Message-ID is derived from the outbox id rather
than drawn at random (`make_msgid`), so a retried message is recognisably the same message;
its domain is the sender's (`SWITCHYARD_EMAIL_FROM`), or the SMTP host when the sender's is
not a qualified name (`localhost`). The body is text/plain; a message with an HTML body
also carries the text as a multipart/alternative, text first.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from urllib.parse import unquote, urlsplit

import aiosmtplib

from .. import metrics
from ..errors import LeaseLost
from ..logs import get_logger

log = get_logger("switchyard.mailer")
CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def clean(value: str | None, limit: int = 200) -> str:
    return CONTROL.sub(" ", str(value or "")).strip()[:limit]


def valid_address(addr: str | None) -> bool:
    if not addr or CONTROL.search(addr):
        return False
    _, parsed = parseaddr(addr)
    return parsed == addr and re.fullmatch(r"[^@\s<>,;]+@[^@\s<>,;]+", addr) is not None


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool
    start_tls: bool | None

    @classmethod
    def parse(cls, url: str) -> Smtp:
        """`smtp://[user:pass@]host[:port]` (STARTTLS when the server offers it),
        `smtp+starttls://` (STARTTLS required) or `smtps://` (TLS from the start)."""
        u = urlsplit(url)
        if u.scheme not in ("smtp", "smtps", "smtp+starttls") or not u.hostname:
            raise ValueError("SMTP_URL must look like smtp://user:pass@host:587 (or smtps://, smtp+starttls://)")
        tls = u.scheme == "smtps"
        return cls(
            host=u.hostname,
            port=u.port or (465 if tls else 587 if u.scheme == "smtp+starttls" else 25),
            username=unquote(u.username) if u.username else None,
            password=unquote(u.password) if u.password else None,
            use_tls=tls,
            start_tls=True if u.scheme == "smtp+starttls" else None,
        )


def id_domain(sender: str, smtp_host: str | None = None) -> str:
    """The domain of Message-IDs: the sender's if qualified, else the SMTP host's (not an
    IP address: a bare one is no valid id-right)."""
    _, _, domain = parseaddr(sender)[1].rpartition("@")
    for candidate in (domain, smtp_host or ""):
        candidate = candidate.strip().lower()
        if re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z][a-z0-9-]*", candidate):
            return candidate
    return "switchyard.invalid"  # RFC 2606: never a real domain


def build(mail: dict, sender: str, domain: str | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = clean(sender)
    msg["To"] = clean(mail["to"])
    msg["Subject"] = clean(mail["subject"])
    at = mail.get("created_at") or datetime.now(UTC)
    msg["Date"] = format_datetime((at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC), usegmt=True)
    local = re.sub(r"[^A-Za-z0-9.-]", ".", mail["_id"])
    msg["Message-ID"] = f"<{local}.switchyard@{domain or id_domain(sender)}>"
    if mail.get("event_type"):
        msg["X-Switchyard-Event"] = clean(mail["event_type"])
    msg.set_content(mail["body"])
    if mail.get("html"):
        msg.add_alternative(mail["html"], subtype="html")
    return msg


class Mailer:
    """Sends what the outbox holds. Any number may run: each message is claimed first."""

    def __init__(self, store, settings) -> None:
        self.stopping = False
        self.store, self.settings = store, settings
        self.smtp = Smtp.parse(settings.smtp_url) if settings.smtp_url else None
        self.domain = id_domain(settings.email_from, self.smtp.host if self.smtp else None)
        self.last_error: str | None = None
        self.wake = asyncio.Event()

    async def run(self) -> None:
        claim = True  # the first pass looks, then only when something is due or we are woken
        while not self.stopping:  # set before cancelling: the driver may turn a cancel into an error
            sent = 0
            try:
                if claim:
                    sent = await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("mailer.error", error=repr(exc))
            if not sent:
                rest, claim = await self._rest()
                try:
                    await asyncio.wait_for(self.wake.wait(), rest)
                    claim = True
                except TimeoutError:
                    pass
                self.wake.clear()

    async def _rest(self) -> tuple[float, bool]:
        """Seconds until the outbox's next due message (a retry's back-off, a sender's
        lease), at most `outbox_check_seconds`: what another process adds is found then;
        and whether anything falls due in that time (an idle outbox costs this one read per
        rest: the claim's reads only run when they can find something)."""
        limit = self.settings.outbox_check_seconds
        if self.smtp is None:
            return limit, False
        now = self.store.clock.now()
        try:
            nxt = await self.store.mail.next_due(now + timedelta(seconds=limit))
        except Exception:
            return 1.0, True
        if nxt is None:
            return limit, False
        return min(limit, max(0.0, (nxt - now).total_seconds()) + 0.01), True

    async def drain(self) -> int:
        if self.smtp is None:
            return 0
        timeout = self.settings.smtp_timeout_seconds
        done = 0
        for mail in await self.store.mail.claim_due(20, lease_seconds=timeout * 3 + 5):
            try:
                await aiosmtplib.send(
                    build(mail, self.settings.email_from, self.domain),
                    hostname=self.smtp.host,
                    port=self.smtp.port,
                    username=self.smtp.username,
                    password=self.smtp.password,
                    use_tls=self.smtp.use_tls,
                    start_tls=self.smtp.start_tls,
                    timeout=timeout,
                )
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                metrics.EMAIL_FAILURES.inc()
                try:
                    status = await self.store.mail.failed(mail["_id"], mail["token"], self.last_error, mail["attempts"])
                except LeaseLost:
                    continue
                log.warning(
                    "mailer.send_failed",
                    mail_id=mail["_id"],
                    attempts=mail["attempts"],
                    next=status,
                    error=self.last_error,
                )
                continue
            try:
                await self.store.mail.sent(mail["_id"], mail["token"])
            except LeaseLost:
                log.warning("mailer.sent_after_lease", mail_id=mail["_id"])
            self.last_error = None
            metrics.NOTIFICATIONS_SENT.labels(channel="email").inc()
            done += 1
        return done

    async def status(self) -> dict:
        if self.smtp is None:
            return {"configured": False, "status": "disabled", "reason": "SMTP_URL is not set: no email is sent"}
        counts = await self.store.mail.counts()
        last = await self.store.mail.last_sent_at()
        return {
            "configured": True,
            "status": "failing" if self.last_error else "ok",
            "server": f"{self.smtp.host}:{self.smtp.port}",
            "pending": counts.get("pending", 0) + counts.get("sending", 0),
            "dead": counts.get("dead", 0),
            "last_error": self.last_error,
            "last_sent_at": last.isoformat() if last else None,
        }
