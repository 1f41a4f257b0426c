"""Pages of the `events` log: how events are stored, many to a document.

A page holds consecutive events, `_id` its first event's seq and `last` its last one's,
with the ids of the jobs and workflows in it (`job_id`, `workflow_id`: arrays, so the
log's indexes on them are multikey and find a job's pages) and `at`, its newest event's
time, which expiry reads. An event document of the log's earlier form (one event, no
`events` field) reads as a page of one, so a log written by both forms is one log.

Invariant: pages never overlap. Every appender starts a page right after a page's last
seq it read or wrote (or after a floor that is one), so a second appender of the same seqs
collides on the first page's `_id`, which is the duplicate `append` detects. A seq inside
a page is never any document's `_id` (a reader that resumes from it looks back at most
`MAX` seqs for the page that holds it).

Why pages: on SecantusDB each inserted document costs a fixed amount of the server's time
(its catalogue read, its oplog entry, its change to every stream) that an event's fields do
not; the relay, which wrote one document an event, doubled the server's work a job
(docs/benchmarks.md). On MongoDB a page is one oplog entry and one `_id` key for many
events (the bucket pattern).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import bson

# Events a page. Part of the stored format: a reader resuming inside a page looks back MAX
# seqs for its start, so MAX may grow between versions but never shrink.
MAX = 256
# A page's bytes, well under a document's 16 MiB, and under a change event's, which carries
# the page whole to every tail.
MAX_BYTES = 2 * 1024 * 1024


def _chunks(events: list[dict]) -> list[list[dict]]:
    chunks: list[list[dict]] = [[]]
    size = 0
    for e in events:
        n = len(bson.encode(e))
        if chunks[-1] and (len(chunks[-1]) >= MAX or size + n > MAX_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(e)
        size += n
    return [c for c in chunks if c]


def pages_of(events: list[dict]) -> list[dict]:
    """Pages for `events`, already numbered in order (each its `_id`): at most MAX events
    and MAX_BYTES each (an event larger than that alone)."""
    pages = []
    for chunk in _chunks(events):
        page: dict[str, Any] = {"_id": chunk[0]["_id"], "last": chunk[-1]["_id"]}
        for field in ("job_id", "workflow_id"):
            ids = sorted({e[field] for e in chunk if e.get(field)})
            if ids:
                page[field] = ids
        dated = [e["at"] for e in chunk if isinstance(e.get("at"), datetime)]
        if dated:
            page["at"] = max(dated)
        page["events"] = chunk
        pages.append(page)
    return pages


def last_of(page: dict) -> int:
    return int(page.get("last", page["_id"]))


def events_in(page: dict, after: int = -1, job_id: str | None = None, workflow_id: str | None = None) -> list[dict]:
    """The events of `page` after seq `after`, of one job or workflow if given."""
    events = page["events"] if "events" in page else [page]
    return [
        e
        for e in events
        if e["_id"] > after
        and (job_id is None or e.get("job_id") == job_id)
        and (workflow_id is None or e.get("workflow_id") == workflow_id)
    ]


def from_page(pages: list[dict], after: int) -> dict:
    """The `_id` range of the pages with events after `after`, given the page (if any) that
    starts at or before it (at most one, the nearest): from its own `_id` when it holds
    later seqs, else past `after`."""
    for page in pages:
        if last_of(page) > after:
            return {"$gte": int(page["_id"])}
    return {"$gt": after}


def only(after: int, field: str, value: str) -> dict:
    """A projection that sends only a page's events of one job or workflow (`field`) after
    `after`, so a job's history does not carry its pages' other events over the wire; a
    document of the earlier form comes whole, as a page of one (`$$ROOT`)."""
    keep = {"$and": [{"$gt": ["$$e._id", after]}, {"$eq": [f"$$e.{field}", value]}]}
    return {
        "last": 1,
        "events": {
            "$cond": [{"$isArray": "$events"}, {"$filter": {"input": "$events", "as": "e", "cond": keep}}, ["$$ROOT"]]
        },
    }
