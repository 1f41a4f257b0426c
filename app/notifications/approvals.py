"""Approval requests: when an approval step starts to await (its `job.awaiting` event),
its approvers are asked: a stored notification (`approval.requested`), pushed over the
WebSocket by every API process's hub (a direct notification, app/notifications/direct.py:
the approvers are not the event's owner), and an email with a link to the approval in the
dashboard's "Needs action" inbox (`{public_url}/#/approvals/<workflow>/<step>`).

Who is asked: the users the step names, and for each role it names (`role:<role>`, or the
default `role:operator`) the tenant's users holding a live API key of at least that role
(the bootstrap admin too, for a workflow of its own tenant). Users known only through a
single sign-on token have no record here: they see the approval in their inbox.

The notifier (app/notifications/service.py) calls `request_approvals` with each batch of
events it fans out, so requests are made once per deployment and replayed after a crash;
ids are `<event seq>:approval~~<tenant>~<user>`, so a replay stores and mails nothing twice.
Every request is stored and pushed; the email goes to the approver's address (their
notification preferences) or `SWITCHYARD_ALERT_EMAIL`, as alerts do.
"""

from __future__ import annotations

from .. import metrics
from ..domain.flowsteps import DEFAULT_APPROVERS, FLOW_ENGINE, roles_at_least
from ..domain.redact import redact_text
from ..store.notifications import notification_id
from .direct import APPROVAL_REQUESTED
from .recipients import NO_RECIPIENT, recipient

BOOTSTRAP_OWNER = "admin"  # the bootstrap admin's owner stamp, tenant `default` (app/api/auth.py)


def is_request(event: dict) -> bool:
    return (
        event.get("type") == "job.awaiting"
        and event.get("engine") == FLOW_ENGINE
        and event.get("operation") == "approval"
    )


def request_id(seq: int, user: str) -> str:
    """Never an event notification's `<seq>:<tenant>~<user>`: names hold no `~`, so no
    event notification's id holds `~~`."""
    return notification_id(seq, f"approval//{user}")


async def approvers_of(store, step: dict) -> list[str]:
    """The owners (`<tenant>/<user>`, or `admin`) asked to decide this approval step."""
    tenant = step["tenant"]
    users: set[str] = set()
    for a in (step.get("flow") or {}).get("approvers") or DEFAULT_APPROVERS:
        if a.startswith("role:"):
            roles = roles_at_least(a[5:])
            users.update(await store.keys.users_with_roles(tenant, roles))
            if tenant == "default" and "admin" in roles:
                users.add(BOOTSTRAP_OWNER)
        elif a.split("/", 1)[0] == tenant:
            users.add(a)
    return sorted(users)


async def request_approvals(store, settings, events: list[dict]) -> int:
    """Ask the approvers of the approval steps whose `job.awaiting` events these are.
    Returns how many notifications were stored."""
    stored = 0
    for e in events:
        if not is_request(e):
            continue
        step = await store.jobs.col.find_one({"_id": e["job_id"]})
        wf = await store.workflows.col.find_one({"_id": e.get("workflow_id")}, {"name": 1})
        if step is None or wf is None:
            continue  # deleted meanwhile
        users = await approvers_of(store, step)
        if not users:
            continue
        key, wf_id = step["step_key"], step["workflow_id"]
        title = f"Approval needed: step {key} of workflow {wf.get('name')} ({wf_id})"
        prefs = await store.notifications.preferences_of(users)
        docs, mails = [], []
        for user in users:
            nid = request_id(e["_id"], user)
            docs.append(
                {"_id": nid, "user": user, "seq": e["_id"], "type": APPROVAL_REQUESTED, "title": title,
                 "job_id": step["_id"], "workflow_id": wf_id, "step_key": key, "status": "awaiting", "error": None,
                 "read": False, "created_at": e["at"]}
            )  # fmt: skip
            address = recipient(prefs.get(user, {}), settings)
            if address is None:
                if settings.smtp_url:
                    NO_RECIPIENT.suppressed(APPROVAL_REQUESTED, user, settings)
                continue
            mails.append({"_id": nid, "to": address, "subject": redact_text(f"[Switchyard] {title}"),
                          "body": redact_text(body(settings, step, wf, user)), "event_type": APPROVAL_REQUESTED})  # fmt: skip
        added = await store.notifications.add_many(docs)
        metrics.NOTIFICATIONS_SENT.labels(channel="db").inc(added)
        stored += added
        if mails:
            await store.mail.enqueue(mails)
    return stored


def body(settings, step: dict, wf: dict, user: str) -> str:
    base = settings.public_url.rstrip("/")
    flow = step.get("flow") or {}
    until = step.get("wait_until")
    lines = [
        f"Step {step['step_key']} of workflow {wf.get('name')} waits for your decision.",
        "",
        f"Workflow:  {step['workflow_id']}",
        f"Step:      {step['step_key']}",
        f"Approvers: {', '.join(flow.get('approvers') or DEFAULT_APPROVERS)} (you are {user})",
    ]
    if until is not None:
        lines.append(f"Deadline:  {until.isoformat()}; then: {flow.get('on_timeout')}")
    lines += [
        "",
        f"Approve or reject it in the dashboard: {base}/#/approvals/{step['workflow_id']}/{step['step_key']}",
        f"The workflow: {base}/#/workflows/{step['workflow_id']}",
    ]
    return "\n".join(lines) + "\n"
