"""Budget notifications: a tenant's spend crossed 80 % (`budget.warning`) or 100 %
(`budget.reached`) of its daily or monthly cost budget (app/store/budgets.py).

No job or workflow changed, so there is no event to fan out: like `schedule.refused`, the
notification is stored here for each of the tenant's users (those with a live API key, and
the owner of the job whose cost crossed it), and mailed by the rule failures follow (the
type in `email_types` or the user's channel preferences, and an address). It reaches the
WebSocket from the stored document: every API process's hub follows these inserts
(app/notifications/direct.py), since the worker storing it has no hub of its own.

Invariant: once per (tenant, period, threshold, user). The store lets one caller through per
threshold and period, and the notification's id (`<YYYYMMDD|YYYYMM>:budget-<daily|monthly>-
<80|100>~<tenant>~<user>`) makes a repeat a no-op; it matches the id pattern the mark-read
endpoint accepts, and can never be an event's `<seq>:<tenant>~<user>`.
"""

from __future__ import annotations

from .. import metrics
from .direct import BUDGET_REACHED, BUDGET_WARNING
from .recipients import NO_RECIPIENT, recipient
from .service import channels_for


def budget_notification_id(crossing: dict, owner: str) -> str:
    return f"{crossing['key'].replace('-', '')}:budget-{crossing['period']}-{crossing['percent']}~{owner.replace('/', '~')}"


def title_of(tenant: str, c: dict) -> str:
    what = "reached" if c["percent"] >= 100 else f"{c['percent']} % spent"
    return f"Budget {what}: tenant {tenant}, {c['period']} {c['key']} ({c['spend']:.2f} of {c['budget']:.2f})"


async def notify_budget(store, settings, tenant: str, crossings: list[dict], also: str | None = None) -> None:
    """Tell the tenant's users that its spend crossed these thresholds (`charge`'s answer).
    `also`: another owner to tell (the job's, who may have no API key)."""
    users = await store.budgets.users_of(tenant)
    if also and also.startswith(f"{tenant}/") and also not in users:
        users.append(also)
    if not users or not crossings:
        return
    now, seq = store.clock.now(), await store.events.last_seq()
    prefs = await store.notifications.preferences_of(users)
    docs, mails = [], []
    for c in crossings:
        etype = BUDGET_REACHED if c["percent"] >= 100 else BUDGET_WARNING
        title = title_of(tenant, c)
        for user in users:
            nid = budget_notification_id(c, user)
            docs.append(
                {"_id": nid, "user": user, "seq": seq, "type": etype, "title": title, "job_id": None,
                 "workflow_id": None, "status": None, "error": None, "read": False, "created_at": now,
                 "budget": {k: c[k] for k in ("period", "key", "percent", "spend", "budget")}}
            )  # fmt: skip
            pref = prefs.get(user, {})
            if "email" not in channels_for(settings, pref, etype):
                continue
            address = recipient(pref, settings)
            if address is None:
                if settings.smtp_url:
                    NO_RECIPIENT.suppressed(etype, user, settings)
                continue
            body = [
                title,
                "",
                f"Tenant:    {tenant}",
                f"Period:    {c['period']} {c['key']} (UTC), rolls over at {c['ends'].isoformat()}",
                f"Spent:     {c['spend']:.4f} of {c['budget']:.4f}",
                "",
                "The tenant's queued jobs wait until the period rolls over or the budget is raised; running jobs go on."
                if c["percent"] >= 100
                else "At 100 % the tenant's queued jobs wait until the period rolls over or the budget is raised.",
                "",
                f"In the API: {settings.public_url.rstrip('/')}/api/v1/admin/tenants/{tenant}/budget",
            ]
            mails.append(
                {"_id": nid, "to": address, "subject": f"[Switchyard] {title}", "body": "\n".join(body) + "\n",
                 "event_type": etype}
            )  # fmt: skip
    added = await store.notifications.add_many(docs)
    metrics.NOTIFICATIONS_SENT.labels(channel="db").inc(added)
    if mails:
        await store.mail.enqueue(mails)
