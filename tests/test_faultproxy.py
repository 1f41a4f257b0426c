"""The lost-reply fault proxy (tests/faultproxy.py) against the session's real server.

What pymongo does when the reply to a write is lost (observed against SecantusDB; a real replica-set
MongoDB should behave the same, per the retryable-writes spec; not checked here):
- a multi-document write (`update_many`) is not retryable: the call raises AutoReconnect, and the write has landed;
- a retryable write (`insert_one`, `update_one`, `find_one_and_update`, ...) is retried once on a new connection with
  the same lsid and txnNumber; the server recognises the retry and answers without applying it again, so the call
  returns normally and the write happened exactly once. With `retryWrites=false` it raises like `update_many`.
  But with `timeoutMS` set, pymongo sends `maxTimeMS` (the time left) on each attempt, and SecantusDB 0.7.0b3 takes
  the retry for a retry only if the command is identical: it is applied again (DuplicateKeyError on an insert, a
  second `$inc`), which MongoDB (keyed on lsid, txnNumber and statement) does not do.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import bson
import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect, ConnectionFailure

from tests.faultproxy import HEADER, OP_MSG, FaultProxy, parse_command, split_url


class Commands(monitoring.CommandListener):
    """The client's own view of the commands it started, by name."""

    def __init__(self) -> None:
        self.events: list[monitoring.CommandStartedEvent] = []

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e.command for e in self.events if e.command_name == name]

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.events.append(event)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def proxy(db_url: str) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(db_url) as p:
        yield p


@pytest.fixture
async def direct(db_url: str) -> AsyncIterator[AsyncMongoClient]:
    """A client straight to the server, past the proxy: what really landed."""
    client: AsyncMongoClient = AsyncMongoClient(db_url, tz_aware=True)
    yield client
    await client.close()


@pytest.fixture
async def connect(proxy: FaultProxy, direct: AsyncMongoClient) -> AsyncIterator[Callable[..., AsyncDatabase]]:
    """Make a client through the proxy; it returns this test's own database (dropped at the end) on that client."""
    name = f"fp_{uuid.uuid4().hex[:12]}"
    clients: list[AsyncMongoClient] = []

    def make(**options: Any) -> AsyncDatabase:
        client: AsyncMongoClient = AsyncMongoClient(
            proxy.url, **{"tz_aware": True, "serverSelectionTimeoutMS": 5000, **options}
        )
        clients.append(client)
        return client[name]

    yield make
    for client in clients:
        await client.close()
    await direct.drop_database(name)


def test_url_points_at_the_proxy_and_keeps_options() -> None:
    assert split_url("mongodb://u:p%40w@db.example:27018/app?replicaSet=rs0&w=majority") == (
        "u:p%40w@",
        "db.example",
        27018,
        "app",
        "replicaSet=rs0&w=majority",
    )
    assert split_url("localhost:1234")[1:3] == ("localhost", 1234)
    assert split_url("mongodb://[::1]/")[1:3] == ("::1", 27017)
    p = FaultProxy("mongodb://127.0.0.1:9/?directConnection=false&appname=x")
    p.port = 4242
    assert p.url == "mongodb://127.0.0.1:4242/?appname=x&directConnection=true"
    with pytest.raises(ValueError):
        FaultProxy("mongodb://a:1,b:2/")


def test_op_msg_parsing_merges_sequences_and_skips_the_checksum() -> None:
    body, docs = bson.encode({"insert": "jobs", "$db": "x"}), b"".join(bson.encode({"_id": i}) for i in range(2))
    sequence = struct.pack("<i", 4 + len(b"documents\0") + len(docs)) + b"documents\0" + docs
    payload = struct.pack("<I", 0b11) + b"\0" + body + b"\1" + sequence + b"CRC!"  # checksum + moreToCome
    message = HEADER.pack(HEADER.size + len(payload), 7, 0, OP_MSG) + payload
    assert parse_command(message) == (
        "insert",
        {"insert": "jobs", "$db": "x", "documents": [{"_id": 0}, {"_id": 1}]},
        True,
    )
    assert parse_command(HEADER.pack(HEADER.size + 4, 7, 0, 2004) + b"\0\0\0\0") is None  # OP_QUERY: never parsed


async def test_passes_commands_through_and_counts_them(
    proxy: FaultProxy, connect: Callable[..., AsyncDatabase], direct: AsyncMongoClient
) -> None:
    db = connect()
    await db.jobs.insert_one({"_id": "a", "n": 1})
    await db.jobs.insert_many([{"_id": "b", "n": 2}, {"_id": "c", "n": 3}])
    assert await db.jobs.find({}, sort=[("_id", 1)]).to_list() == [
        {"_id": "a", "n": 1},
        {"_id": "b", "n": 2},
        {"_id": "c", "n": 3},
    ]
    assert await direct[db.name].jobs.count_documents({}) == 3
    assert proxy.seen["insert"] == 2 and proxy.seen["find"] == 1
    assert proxy.dropped == [] and proxy.accepted >= 2  # a monitor and an application connection at least


async def test_a_lost_update_many_reply_raises_yet_the_update_landed(
    proxy: FaultProxy, connect: Callable[..., AsyncDatabase], direct: AsyncMongoClient
) -> None:
    db = connect()
    await db.jobs.insert_many([{"_id": i, "state": "queued"} for i in range(3)])
    done = {"$set": {"state": "done"}}
    rule = proxy.drop_reply_to("update", collection="jobs", where=lambda body: body["updates"][0]["u"] == done)
    with pytest.raises(ConnectionFailure) as raised:
        await db.jobs.update_many({"state": "queued"}, {"$set": {"state": "done"}})
    assert isinstance(raised.value, AutoReconnect)
    assert await direct[db.name].jobs.distinct("state") == ["done"]
    assert rule.fired == 1 and proxy.seen["update"] == 1  # a multi-document update is not retried
    [(command, body)] = proxy.dropped
    assert command == "update" and body["updates"][0]["multi"] is True  # the kind-1 sequence, merged into the body

    again = await db.jobs.update_many({"state": "done"}, {"$set": {"state": "done"}})  # the rule is spent
    assert again.matched_count == 3 and len(proxy.dropped) == 1


async def test_a_lost_insert_reply_is_retried_and_lands_exactly_once(
    proxy: FaultProxy, connect: Callable[..., AsyncDatabase], direct: AsyncMongoClient
) -> None:
    commands = Commands()
    db = connect(event_listeners=[commands])
    proxy.drop_reply_to("insert", collection="jobs")
    result = await db.jobs.insert_one({"_id": "j1", "state": "queued"})  # no error reaches the caller
    assert result.inserted_id == "j1"
    assert await direct[db.name].jobs.find().to_list() == [{"_id": "j1", "state": "queued"}]
    assert len(proxy.dropped) == 1 and proxy.seen["insert"] == 2
    first, retry = commands.named("insert")
    assert retry["lsid"] == first["lsid"] and retry["txnNumber"] == first["txnNumber"]  # the same retryable write


async def test_a_lost_insert_reply_raises_without_retryable_writes(
    proxy: FaultProxy, connect: Callable[..., AsyncDatabase], direct: AsyncMongoClient
) -> None:
    db = connect(retryWrites=False)
    proxy.drop_reply_to("insert", collection="jobs")
    with pytest.raises(AutoReconnect):
        await db.jobs.insert_one({"_id": "j1"})
    assert await direct[db.name].jobs.count_documents({}) == 1 and proxy.seen["insert"] == 1


async def test_a_retried_update_one_is_applied_once(
    proxy: FaultProxy, connect: Callable[..., AsyncDatabase], direct: AsyncMongoClient
) -> None:
    db = connect()
    await db.jobs.insert_one({"_id": "j1", "attempts": 0})
    proxy.drop_reply_to("update", collection="jobs")
    result = await db.jobs.update_one({"_id": "j1"}, {"$inc": {"attempts": 1}})
    assert result.modified_count == 1 and proxy.seen["update"] == 2
    assert (await direct[db.name].jobs.find_one({"_id": "j1"}))["attempts"] == 1


async def test_keeps_serving_many_new_connections_after_drops(
    proxy: FaultProxy, connect: Callable[..., AsyncDatabase], direct: AsyncMongoClient
) -> None:
    db = connect(retryWrites=False)
    rule = proxy.drop_reply_to("insert", collection="jobs", times=2)
    for i in range(2):
        with pytest.raises(AutoReconnect):
            await db.jobs.insert_one({"_id": f"lost{i}"})
    assert rule.fired == 2

    fresh = connect(minPoolSize=10, maxPoolSize=20)
    await asyncio.gather(*(fresh.jobs.insert_one({"_id": i}) for i in range(50)))
    assert await fresh.jobs.count_documents({}) == 52 and len(proxy.dropped) == 2
    async with asyncio.timeout(5):
        while proxy.connections < 10:
            await asyncio.sleep(0.05)
    assert proxy.accepted >= 10
    assert await direct[db.name].jobs.count_documents({}) == 52


async def test_stop_closes_every_connection_and_leaves_no_tasks(
    proxy: FaultProxy, connect: Callable[..., AsyncDatabase]
) -> None:
    db = connect(minPoolSize=3)
    await db.jobs.insert_one({"_id": 1})
    await db.client.close()  # pymongo 4.20 leaks a socket if close() cancels a monitor reconnecting to a stopped proxy
    accepted = proxy.accepted
    opened = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(3)]
    async with asyncio.timeout(5):
        while proxy.accepted < accepted + 3:  # all three handled, each with its upstream connection
            await asyncio.sleep(0.01)
    await proxy.stop()
    assert proxy.connections == 0
    assert [t for t in asyncio.all_tasks() if "FaultProxy" in repr(t.get_coro())] == []
    for reader, writer in opened:
        assert await reader.read() == b""  # closed by the proxy
        writer.close()
        await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.port)


async def test_a_broken_predicate_drops_nothing_and_fails_the_proxy(
    proxy: FaultProxy, connect: Callable[..., AsyncDatabase]
) -> None:
    db = connect(retryWrites=False)
    proxy.drop_reply_to("insert", where=lambda body: body["no such field"])
    await db.jobs.insert_one({"_id": 1})  # not dropped: a KeyError is no match
    assert proxy.dropped == [] and isinstance(proxy.errors[0], KeyError)
    await db.client.close()  # before its server goes away (else close() waits out server selection for endSessions)
    with pytest.raises(RuntimeError, match="1 error"):
        await proxy.stop()
