"""EventRelay: turns the change feed of jobs and workflows into the `events` log.

One relay runs per deployment at a time (the `event-relay` lease); every `serve` process
stands ready to take over. The checkpoint is the change stream's resume token and the last
seq, saved under the lease after the batch it covers is in `events`. A relay that dies
between the append and the save replays that batch; its successor skips the changes whose
token is among the log's events after the checkpoint, and `EventStore.append` skips any a
deposed relay adds meanwhile, so every write yields its event exactly once (identity: the
change's resume token).
"""

from __future__ import annotations

import time
from collections import OrderedDict

from ..domain.events import from_change, static_fields
from ..leadership import Singleton
from ..store.events import RELAY_LEASE
from ..store.feed import HistoryLost

LEASE = RELAY_LEASE


class _Known:
    """What the relay remembers of recent jobs and workflows: their unchanging fields and
    the status of their last event. Bounded; a miss costs one batched read."""

    def __init__(self, size: int = 200_000) -> None:
        self.size = size
        self.items: OrderedDict[str, list] = OrderedDict()

    def get(self, oid: str) -> list | None:
        item = self.items.get(oid)
        if item is not None:
            self.items.move_to_end(oid)
        return item

    def put(self, oid: str, static: dict, status: str | None) -> None:
        self.items[oid] = [static, status]
        self.items.move_to_end(oid)
        if len(self.items) > self.size:
            self.items.popitem(last=False)


class EventRelay(Singleton):
    lease = LEASE

    def __init__(self, store, settings, lease_seconds: float = 10.0) -> None:
        super().__init__(store, lease_seconds)
        self.settings = settings
        self.known = _Known()
        self.appended = 0

    async def lead(self, state: dict) -> None:
        token, floor = state.get("token"), state.get("seq", 0)
        saved, appended = time.monotonic(), False
        # The log's last seq, read once per takeover: while this relay leads it is the only
        # appender, so it counts on from there (a deposed one still finishing costs a retry).
        last = max(await self.store.events.last_seq(), floor)
        # The replayed changes already in the log: every event after the checkpoint, read
        # after `last`, so what a deposed relay appends later lands past `last`, where
        # `append` finds it (without a checkpoint the stream starts now: nothing replays).
        done = await self.store.events.tokens_after(floor) if token is not None else set()
        self.store.events.local = True  # this process's hub follows our appends, no stream
        try:
            async for changes, new_token in self.store.feed.batches(token):
                if changes:
                    events = [e for e in await self.derive(changes) if e["token"] not in done]
                    if events:
                        added = await self.store.events.append(events, floor, last)
                        if added:
                            self.appended += added
                            last = floor = max(floor, self.store.events.top)
                        appended = True
                if not await self.keep():
                    return  # deposed: whoever leads now resumes from the saved checkpoint
                # At most one save a second after events, one a minute without (the token then
                # only moved past others' writes, which a replay skips): every write costs the
                # server, and wakes every change stream on SecantusDB.
                now = time.monotonic()
                if new_token != token and (token is None or now - saved > (1.0 if appended else 60.0)):
                    if not await self.save({"token": new_token, "seq": floor}):
                        return
                    token, saved, appended = new_token, now, False
        except HistoryLost as exc:
            self.log.error(
                "relay.history_lost", error=str(exc), action="restarting from now; events in between are lost"
            )
            await self.save({"token": None, "seq": floor})
        finally:
            self.store.events.local = False

    async def derive(self, changes: list[dict]) -> list[dict]:
        """Events for a batch of changes, in order, reading unknown jobs' fields in one go."""
        missing: dict[str, set[str]] = {"job": set(), "workflow": set()}
        for ch in changes:
            kind = "job" if ch["ns"]["coll"] == "jobs" else "workflow"
            oid = ch["documentKey"]["_id"]
            if ch["operationType"] == "update" and self.known.get(oid) is None:
                missing[kind].add(oid)
        for kind, ids in missing.items():
            for oid, doc in (await self.store.feed.static(kind, list(ids))).items():
                self.known.put(oid, static_fields(kind, doc), None)
        now = self.store.clock.now()
        events = []
        for ch in changes:
            kind = "job" if ch["ns"]["coll"] == "jobs" else "workflow"
            oid = ch["documentKey"]["_id"]
            doc = ch.get("fullDocument")
            item = self.known.get(oid)
            if doc is not None:
                static = static_fields(kind, doc)
            else:
                static = item[0] if item else None
            event = from_change(ch, static, item[1] if item else None, now)
            status = event["status"] if event and event["type"] != "job.progress" else (item[1] if item else None)
            if doc is not None or item is not None:
                self.known.put(oid, static or {}, status)
            if event:
                events.append(event)
        return events
