"""Connection, the database clock, index creation, `_id $in` helpers, and the `Store` bundle.

Invariant: every time that decides a lease (expiry, rescue, promotion) comes from `Clock`,
which follows the database server's clock, so workers with skewed clocks agree.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

from bson.codec_options import CodecOptions
from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from ..logs import get_logger
from ..settings import Settings
from . import quirks


async def ensure_index(col: AsyncCollection, keys, **options) -> str:
    """`create_index`, replacing an index on the same keys whose options changed since an
    earlier version created it (IndexOptionsConflict / IndexKeySpecsConflict)."""
    try:
        return await col.create_index(keys, **options)
    except OperationFailure as exc:
        if exc.code not in (85, 86):
            raise
    wanted = [(k, 1) for k in [keys]] if isinstance(keys, str) else list(keys)
    for name, info in (await col.index_information()).items():
        if [(k, int(v)) for k, v in info["key"]] == [(k, int(v)) for k, v in wanted] or name == options.get("name"):
            await col.drop_index(name)
    return await col.create_index(keys, **options)


async def ensure_ttl(col: AsyncCollection, field: str, seconds: int, name: str = "retention") -> None:
    """A TTL index on `field`. Index options are fixed at creation on MongoDB, so a changed
    retention setting is applied with `collMod` instead of failing every start with
    IndexOptionsConflict."""
    try:
        await col.create_index(field, expireAfterSeconds=seconds, name=name)
    except OperationFailure as exc:
        if exc.code not in (85, 86):
            raise
        await col.database.command("collMod", col.name, index={"name": name, "expireAfterSeconds": seconds})


# Most ids in one `_id: {$in: [...]}` (app/store/quirks.py). SecantusDB matches each fetched
# document against the whole list: 2,000 ids took 2.0 s in one query and 0.11 s in chunks of
# 50 (docs/benchmarks.md).
IN_CHUNK = quirks.IN_CHUNK


def chunks(ids: list, size: int = IN_CHUNK):
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


async def find_in(col: AsyncCollection, ids, filt: dict | None = None, projection: dict | None = None) -> list[dict]:
    """`find({_id: {$in: ids}, **filt})`, chunked."""
    out: list[dict] = []
    for part in chunks(list(ids)):
        out += await col.find({"_id": {"$in": part}, **(filt or {})}, projection).to_list(None)
    return out


async def earliest(col: AsyncCollection, query: dict, field: str):
    """The smallest `field` of the documents matching `query`, or None: one sorted document
    back (an index on `field`, or one whose prefix `query` pins, answers it with one entry)."""
    doc = await col.find_one(query, {field: 1}, sort=[(field, 1)])
    return doc.get(field) if doc else None


async def outbox_next_due(col: AsyncCollection, state: str, pending: str, sending: str, until):
    """An outbox's next due time (mail, webhook deliveries): the earliest pending
    `next_attempt_at`, or the earliest lease of one being sent (taken back when it runs
    out), looking no further than `until`: bounded on both sides, the reads match only what
    is due soon."""
    from .leases import EPOCH

    window = {"$gte": EPOCH, "$lte": until}
    times = [
        await earliest(col, {state: pending, "next_attempt_at": window}, "next_attempt_at"),
        await earliest(col, {state: sending, "lease_until": window}, "lease_until"),
    ]
    return min((t for t in times if t), default=None)


async def update_in(col: AsyncCollection, ids, filt: dict | None, update) -> int:
    """`update_many({_id: {$in: ids}, **filt}, update)`, chunked; returns how many changed.
    Each document's update is guarded by `filt` on its own, so chunking changes nothing."""
    modified = 0
    for part in chunks(list(ids)):
        modified += (await col.update_many({"_id": {"$in": part}, **(filt or {})}, update)).modified_count
    return modified


class Clock:
    """The database server's clock, read through `hello.localTime` and extrapolated locally
    with the monotonic clock between syncs. Precision is about one round trip."""

    def __init__(self, db: AsyncDatabase) -> None:
        self._db = db
        self._base: datetime | None = None
        self._mono = 0.0
        self._rtt = 1.0

    async def sync(self) -> datetime:
        t0 = time.monotonic()
        reply = await self._db.command("hello")
        t1 = time.monotonic()
        server = reply["localTime"]
        if server.tzinfo is None:
            server = server.replace(tzinfo=UTC)
        # The server read its clock somewhere inside the round trip: assume the middle. A
        # slow round trip is a poor reading, so it replaces a better one only when that one
        # is a minute old (the monotonic clock drifts far less than that in a minute).
        rtt = t1 - t0
        if self._base is None or rtt <= self._rtt * 2 or t1 - self._mono > 60:
            self._base, self._mono, self._rtt = server, (t0 + t1) / 2, max(rtt, 0.0005)
        return self.now()

    async def fresh(self, max_age: float = 60.0) -> datetime:
        """`now()`, syncing first when the last sync is older than `max_age` seconds: the
        monotonic clock drifts far less than a millisecond in a minute, so loops that only
        need the time (the heartbeat, the rescuer) need not ask the server each pass."""
        if self._base is None or time.monotonic() - self._mono > max_age:
            return await self.sync()
        return self.now()

    def now(self) -> datetime:
        """Whole milliseconds, as BSON stores dates: a time handed out before a write (in
        an API answer) is exactly the one read back later."""
        if self._base is None:  # before the first sync, fall back to the local clock
            t = datetime.now(UTC)
        else:
            t = self._base + timedelta(seconds=time.monotonic() - self._mono)
        return t.replace(microsecond=t.microsecond // 1000 * 1000)


SCHEMA_VERSION = 10  # raise it whenever an index, a migration or a stored format changes (10: event pages)


class Store:
    """Bundles the per-collection stores that share one database and one clock."""

    def __init__(
        self, client: AsyncMongoClient, settings: Settings, db_name: str | None = None, *, secantus: bool = True
    ) -> None:
        from .budgets import BudgetStore
        from .claimer import Claimer
        from .decisions import Decisions
        from .dedupe import DedupeStore
        from .due import DueTimes
        from .engines import EngineStore
        from .enqueue import Enqueuer
        from .events import EventStore
        from .feed import ChangeFeed
        from .flowsteps import FlowSteps
        from .guard import AuditLog, RateLimits
        from .job_admin import JobAdmin
        from .jobs import JobQueries
        from .keys import KeyStore
        from .leases import LeaseStore
        from .lifecycle import Lifecycle
        from .mail import MailStore
        from .mapsteps import MapSteps
        from .notifications import NotificationStore
        from .quirks import BulkGate
        from .retention import EventRetention, Expiry, JobRetention, WorkflowRetention
        from .schedules import ScheduleStore
        from .spawn import Spawner
        from .steps import StepMoves
        from .usage import UsageStore
        from .webhook_deliveries import DeliveryStore
        from .webhooks import WebhookStore
        from .workers import WorkerStore
        from .workflow_flow import WorkflowFlow
        from .workflows import WorkflowStore

        self.client = client
        self.secantus = secantus  # whether the embedded server's workarounds apply (quirks.py)
        self.settings = settings
        # tz-aware reads and majority, journaled writes whatever the client's own defaults:
        # a producer (app/producer.py) may bring the application's client
        self.db = client.get_database(
            db_name or settings.mongodb_db,
            codec_options=CodecOptions(tz_aware=True, tzinfo=UTC),
            write_concern=WriteConcern(w=_w(settings), j=True),
        )
        self.clock = Clock(self.db)
        self.engines = EngineStore(self.db, settings, self.clock)
        self.numbers = self.engines.numbers  # seqs and in-flight markers (numbering.py)
        self.workers = WorkerStore(self.db, settings, self.clock)
        self.bulk = BulkGate(enabled=secantus)
        # The jobs collection's collaborators: who reads, who numbers, who moves, who claims.
        jobs, dedupe, expiry = self.db["jobs"], DedupeStore(self.db), Expiry(settings)
        self.enqueuer = Enqueuer(jobs, self.engines, self.numbers, self.clock, self.bulk)
        self.lifecycle = Lifecycle(
            jobs,
            settings,
            self.clock,
            self.engines,
            self.enqueuer,
            dedupe,
            self.workers,
            settle=lambda ids: self.flow.settle_many(ids),
            expiry=expiry,
        )
        self.claimer = Claimer(jobs, settings, self.clock, self.engines, self.numbers, self.lifecycle)
        self.jobs = JobQueries(jobs, settings, self.engines, self.claimer)
        self.steps = StepMoves(jobs, self.clock, self.enqueuer, expiry)
        self.job_admin = JobAdmin(jobs, self.engines, self.enqueuer, self.lifecycle, self.jobs, dedupe, self.clock)
        self.workflows = WorkflowStore(self.db, settings, self.clock, self.jobs, self.lifecycle, self.steps)
        self.flow = WorkflowFlow(self.workflows, self.jobs, self.steps, self.clock)
        # Steps that wait for people, events and time: their moves, and their kinds wired in.
        self.decisions = Decisions(jobs, self.clock, expiry, self.lifecycle)
        self.flowsteps = FlowSteps(self.decisions, self.steps, self.lifecycle, self.workflows, self.jobs, self.clock)
        self.flowsteps.register()
        self.maps = MapSteps(jobs, settings, self.clock, self.workflows, self.lifecycle, self.steps)
        self.spawn = Spawner(jobs, settings, self.workflows, self.jobs, self.steps)
        self.job_retention = JobRetention(jobs, dedupe)
        self.event_retention = EventRetention(self.db["events"], settings)
        self.workflow_retention = WorkflowRetention(self.workflows, self.steps)
        self.events = EventStore(self.db, settings, gate=self.bulk)
        self.feed = ChangeFeed(self.db, gate=self.bulk)
        self.leases = LeaseStore(self.db, self.clock)
        self.due = DueTimes(self.db, self.engines)
        self.keys = KeyStore(self.db)
        self.rate_limits = RateLimits(self.db)
        self.audit = AuditLog(self.db)
        self.notifications = NotificationStore(self.db, settings)
        self.mail = MailStore(self.db, settings, self.clock)
        self.schedules = ScheduleStore(self.db, settings, self.clock, self.jobs, self.lifecycle, self.workflows)
        self.usage = UsageStore(self.db, jobs, self.clock)
        self.budgets = BudgetStore(self.db, self.usage, self.clock)
        self.webhooks = WebhookStore(self.db, self.clock)
        self.webhook_deliveries = DeliveryStore(self.db, settings, self.clock)

    def schema(self) -> dict:
        """What the database's indexes and migrations must match: this version's schema and
        the settings that index options depend on (index options are fixed at creation)."""
        s = self.settings
        return {"version": SCHEMA_VERSION, "event_retention_seconds": int(s.event_retention_seconds)}

    async def start(self, wait_seconds: float = 120.0) -> None:
        """Sync the clock; then, unless the database already matches this version's schema,
        migrate it: in one process at a time (the `migrate` lease), while the others wait.
        Every process of a deployment calls this, and only the first does the work, so index
        builds (which wait for the voting members on MongoDB) never race."""
        await self.clock.sync()
        meta = self.db["meta"]
        holder = f"migrate-{uuid.uuid4().hex[:12]}"
        deadline = time.monotonic() + wait_seconds
        while (found := await meta.find_one({"_id": "schema"}, {"_id": 0})) != self.schema():
            if found and int(found.get("version", 0)) > SCHEMA_VERSION:
                # A newer version migrated it, mid rolling deploy: its schema keeps what this
                # version queries (docs/deployment.md), and migrating back would re-create
                # the indexes it dropped and make every newer process migrate again.
                get_logger("switchyard.store").warning(
                    "store.schema_newer", database=found.get("version"), ours=SCHEMA_VERSION
                )
                return
            if await self.leases.acquire("migrate", holder, seconds=max(60.0, wait_seconds)):
                try:
                    await self.migrate()
                finally:
                    await self.leases.release("migrate", holder)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    "another process has been migrating the database for too long; see `switchyard migrate`"
                )
            await asyncio.sleep(0.5)

    async def migrate(self) -> None:
        """Create every index and run every data migration (idempotent), then record the
        schema. `switchyard migrate` runs this before a rolling deploy; a migration only
        adds indexes and fields, and an index is dropped only by a version whose code no
        longer queries it (docs/deployment.md)."""
        await asyncio.gather(
            self.jobs.ensure_indexes(),
            self.decisions.ensure_indexes(),
            self.engines.ensure_indexes(),
            self.workers.ensure_indexes(),
            self.events.ensure_indexes(),
            self.keys.ensure_indexes(),
            self.audit.ensure_indexes(),
            self.notifications.ensure_indexes(),
            self.mail.ensure_indexes(),
            self.workflows.ensure_indexes(),
            self.schedules.ensure_indexes(),
            self.usage.ensure_indexes(),
            self.webhooks.ensure_indexes(),
            self.webhook_deliveries.ensure_indexes(),
        )
        await self.seed_event_relay()
        await self.db["meta"].replace_one({"_id": "schema"}, self.schema(), upsert=True)

    async def seed_event_relay(self) -> None:
        """Where the event relay starts on a new database: here, before any process of this
        version writes a job. Without it the first relay starts its change stream whenever
        it first leads, and the writes made before that (a submit racing start-up) would
        never become events. Where change streams are missing, the relay cannot run anyway."""
        from ..notifications.relay import LEASE

        try:
            token = await self.feed.position()
        except Exception:
            return
        await self.leases.seed(LEASE, {"token": token, "seq": 0})

    async def ping(self) -> bool:
        try:
            await asyncio.wait_for(self.db.command("ping"), timeout=2)
            return True
        except Exception:
            return False

    async def close(self) -> None:
        await self.numbers.flush()
        await self.client.close()


def answers_ping(url: str, timeout_ms: int = 500) -> bool:
    """Whether a server at `url` answers `ping` (blocking; for start-up checks)."""
    from pymongo import MongoClient

    try:
        with MongoClient(url, serverSelectionTimeoutMS=timeout_ms) as c:
            c.admin.command("ping")
        return True
    except Exception:
        return False


def _w(settings: Settings) -> str | int:
    return "majority" if settings.write_concern == "majority" else int(settings.write_concern)


def connect(
    url: str, settings: Settings, db_name: str | None = None, *, secantus: bool | None = None, **client_options
) -> Store:
    """A `Store` on `url`. Writes are `w: majority` (`SWITCHYARD_WRITE_CONCERN`) and journaled
    (`j: true`), so an acknowledged job survives a server crash and, on a replica set, an
    election (a `w: 1` write can be rolled back). Every operation carries `timeoutMS`
    (`SWITCHYARD_DB_TIMEOUT_MS`, 30 s), which covers server selection through a primary
    election instead of failing at the driver's 10 s of server selection, except on the
    embedded server (`quirks.py`; `secantus`: whether `url` leads to it, asked of the server
    when not given). Options in the URL win over these defaults; `client_options` (such as
    `event_listeners`) go to the client as they are."""
    secantus = quirks.is_secantus(url) if secantus is None else secantus
    w = _w(settings)
    options = {
        "w": w,
        "journal": True,
        "connectTimeoutMS": 5_000,
        **quirks.timeout_options(url, settings.db_timeout_ms, secantus),
    }
    given = {k.lower() for k in url.partition("?")[2].replace(";", "&").split("&") for k in [k.partition("=")[0]] if k}
    client: AsyncMongoClient = AsyncMongoClient(
        url,
        tz_aware=True,
        **{k: v for k, v in options.items() if k.lower() not in given and not (k == "journal" and "j" in given)},
        **client_options,
    )
    return Store(client, settings, db_name, secantus=secantus)
