"""A lost-reply fault proxy for tests: an asyncio TCP proxy, in the test process, between a pymongo client and
any MongoDB-wire-protocol server.

It owns its listening socket on 127.0.0.1, every client connection it accepts with that connection's own upstream
connection, and a list of fault rules. Bytes pass through unchanged, message by message. When an OP_MSG request
matches a rule, the request still goes to the server, and when the server's reply to it arrives the proxy closes
both connections instead of passing the reply on: the write lands, the client sees a dropped connection.

Only OP_MSG requests that expect a reply can match; other opcodes (OP_QUERY, OP_COMPRESSED) and moreToCome
requests pass through untouched. Replies are forwarded as they come, so exhaust replies (streaming hello) work.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import bson
from bson.errors import BSONError

OP_MSG = 2013
HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode
CHECKSUM_PRESENT, MORE_TO_COME = 1 << 0, 1 << 1

Match = Callable[[str, dict[str, Any]], bool]
CODEC = bson.CodecOptions(tz_aware=True)  # as the app's clients read datetimes


def parse_command(message: bytes) -> tuple[str, dict[str, Any], bool] | None:
    """(command name, body with kind-1 sequences merged in, moreToCome) of an OP_MSG, else None."""
    if len(message) < 21 or HEADER.unpack_from(message)[3] != OP_MSG:
        return None
    (flags,) = struct.unpack_from("<I", message, 16)
    end, pos = len(message) - (4 if flags & CHECKSUM_PRESENT else 0), 20
    body: dict[str, Any] | None = None
    sequences: dict[str, list[dict[str, Any]]] = {}
    while pos < end:
        kind, (size,) = message[pos], struct.unpack_from("<i", message, pos + 1)
        if kind == 0:
            body = bson.decode(message[pos + 1 : pos + 1 + size], CODEC)
        elif kind == 1:
            name_end = message.index(b"\0", pos + 5)
            sequences[message[pos + 5 : name_end].decode()] = bson.decode_all(
                message[name_end + 1 : pos + 1 + size], CODEC
            )
        else:
            return None
        pos += 1 + size
    if body is None:
        return None
    body.update(sequences)
    return next(iter(body), ""), body, bool(flags & MORE_TO_COME)


async def read_message(reader: asyncio.StreamReader) -> bytes | None:
    """One whole wire message, or None at end of stream."""
    try:
        header = await reader.readexactly(HEADER.size)
        return header + await reader.readexactly(HEADER.unpack(header)[0] - HEADER.size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def split_url(upstream: str) -> tuple[str, str, int, str, str]:
    """(userinfo with its '@', host, port, database path, query) of a one-host mongodb:// URL or `host:port`."""
    if upstream.startswith("mongodb+srv://"):
        raise ValueError("a FaultProxy needs one host:port, not an SRV URL")
    rest, _, query = upstream.removeprefix("mongodb://").partition("?")
    hostinfo, _, path = rest.partition("/")
    userinfo, at, hostport = hostinfo.rpartition("@")
    if "," in hostport:
        raise ValueError(f"a FaultProxy fronts one server, not {hostport!r}")
    host, port = (hostport, "27017") if hostport.endswith("]") or ":" not in hostport else hostport.rsplit(":", 1)
    return userinfo + at, host.strip("[]"), int(port), path, query


@dataclass
class Rule:
    """Drop the reply to up to `times` requests for which `match(command, body)` is true."""

    match: Match
    times: int = 1
    fired: int = 0


class FaultProxy:
    """`async with FaultProxy(url) as proxy:` point a client at `proxy.url`, then `proxy.drop_reply_to(...)`."""

    def __init__(self, upstream: str) -> None:
        self._userinfo, self.upstream_host, self.upstream_port, self._path, self._query = split_url(upstream)
        self.port = 0
        self.seen: Counter[str] = Counter()  # OP_MSG requests per command name, dropped ones included
        self.dropped: list[tuple[str, dict[str, Any]]] = []
        self.accepted = 0  # client connections accepted so far
        self.errors: list[BaseException] = []  # from rule predicates (no match) or the proxy itself; stop() raises
        self._rules: list[Rule] = []
        self._lock = threading.RLock()  # a predicate may add rules
        self._server: asyncio.Server | None = None
        self._live: dict[asyncio.Task[None], asyncio.StreamWriter] = {}  # connection handler -> its client side

    @property
    def url(self) -> str:
        options = [o for o in self._query.split("&") if o and not o.lower().startswith("directconnection=")]
        query = "&".join([*options, "directConnection=true"])
        return f"mongodb://{self._userinfo}127.0.0.1:{self.port}/{self._path}?{query}"

    @property
    def connections(self) -> int:
        """Client connections open right now."""
        return len(self._live)

    def drop_reply(self, match: Match, times: int = 1) -> Rule:
        rule = Rule(match, times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def drop_reply_to(
        self,
        command: str,
        collection: str | None = None,
        where: Callable[[dict[str, Any]], bool] | None = None,
        times: int = 1,
    ) -> Rule:
        """Drop replies to `command` (on `collection`, the command's value, if given) whose body passes `where`."""

        def match(name: str, body: dict[str, Any]) -> bool:
            if name != command or (collection is not None and body[name] != collection):
                return False
            return where is None or where(body)

        return self.drop_reply(match, times)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _fire(self, command: str, body: dict[str, Any]) -> bool:
        with self._lock:  # no await inside: firing is atomic on the loop, and against other threads
            for rule in self._rules:
                try:
                    matched = rule.match(command, body)
                except Exception as e:  # noqa: BLE001 - a broken predicate must not pass for a dropped reply
                    self.errors.append(e)
                    continue
                if matched:
                    rule.fired += 1
                    if rule.fired >= rule.times:
                        self._rules.remove(rule)
                    self.dropped.append((command, body))
                    return True
        return False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for client_w in self._live.values():  # the handlers see end of stream and finish on their own: on 3.11,
            client_w.transport.abort()  # asyncio logs an error for a cancelled client_connected_cb task
        await asyncio.gather(*self._live, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        if self.errors:
            raise RuntimeError(f"{len(self.errors)} error(s) in the fault proxy or its rules") from self.errors[0]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._server is None or not self._server.is_serving():  # accepted just before stop()
            client_w.close()
            return
        self._live[task] = client_w
        self.accepted += 1
        upstream_w: asyncio.StreamWriter | None = None
        pumps: list[asyncio.Task[None]] = []
        try:
            upstream_r, upstream_w = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            doomed: set[int] = set()  # requestIDs whose reply must be lost
            pumps = [
                asyncio.create_task(self._requests(client_r, upstream_w, doomed)),
                asyncio.create_task(self._replies(upstream_r, client_w, doomed)),
            ]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except OSError:
            pass  # the server is unreachable: the client sees its connection closed
        finally:
            for pump in pumps:
                pump.cancel()
            for result in await asyncio.gather(*pumps, return_exceptions=True):
                if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError | OSError):
                    self.errors.append(result)
            writers = [w for w in (client_w, upstream_w) if w is not None]
            for writer in writers:
                writer.close()
            await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
            del self._live[task]

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, doomed: set[int]) -> None:
        while (message := await read_message(reader)) is not None:
            try:
                parsed = parse_command(message)
            except (struct.error, ValueError, IndexError, BSONError):  # malformed: pass it on, never match it
                parsed = None
            if parsed is not None:
                command, body, more_to_come = parsed
                self.seen[command] += 1
                if not more_to_come and self._fire(command, body):
                    doomed.add(HEADER.unpack_from(message)[1])  # before the request leaves: the reply can't beat it
            writer.write(message)
            await writer.drain()

    async def _replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, doomed: set[int]) -> None:
        while (message := await read_message(reader)) is not None:
            if HEADER.unpack_from(message)[2] in doomed:
                return  # the server answered; the client never hears it
            writer.write(message)
            await writer.drain()
