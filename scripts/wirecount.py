"""Counts the commands a process sends to the database, at the wire.

A TCP proxy between the process and the server: every message a client sends (OP_MSG or the
older OP_QUERY) is one command; its name (the first key of its body) is tallied. Nothing is
changed on the way. Used by `scripts/bench` for the "commands at rest" row and by hand:

    python scripts/wirecount.py mongodb://127.0.0.1:27017 --seconds 30 -- switchyard worker

runs the command with MONGODB_URL pointed at the proxy, lets it settle, counts for
`--seconds`, and prints the commands per second by name.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import time
from collections import Counter
from urllib.parse import urlsplit, urlunsplit

import bson

OP_MSG, OP_QUERY, OP_COMPRESSED = 2013, 2004, 2012


def command_name(op: int, body: bytes) -> str:
    """The command a client message carries (the first key of its document)."""
    try:
        if op == OP_MSG:
            # flagBits (4), then sections; kind 0 is the command document
            pos = 4
            while pos < len(body):
                kind = body[pos]
                pos += 1
                if kind == 0:
                    (size,) = struct.unpack_from("<i", body, pos)
                    doc = bson.decode(body[pos : pos + size])
                    return next(iter(doc), "?")
                (size,) = struct.unpack_from("<i", body, pos)  # kind 1: a document sequence
                pos += size
        if op == OP_QUERY:
            pos = 4 + body.index(b"\0", 4) + 1 + 8  # flags, collection name, skip, return
            (size,) = struct.unpack_from("<i", body, pos)
            return next(iter(bson.decode(body[pos : pos + size])), "?")
        if op == OP_COMPRESSED:
            return "compressed"
    except Exception:  # a malformed message is still one message
        pass
    return f"op{op}"


class WireCounter:
    """A counting proxy in front of `upstream` ("host:port"). `url(original)` gives the
    original MongoDB URL pointed at the proxy; `counts` holds commands by name since the
    last `reset()`."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.counts: Counter[str] = Counter()
        self.since = time.monotonic()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> WireCounter:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server:
            self.server.close()

    def reset(self) -> None:
        self.counts.clear()
        self.since = time.monotonic()

    def rate(self) -> float:
        """Commands per second since the last reset."""
        return sum(self.counts.values()) / max(time.monotonic() - self.since, 1e-9)

    def url(self, original: str) -> str:
        parts = urlsplit(original)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        netloc = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
        query = (
            parts.query
            if "directConnection" in parts.query
            else "&".join(filter(None, [parts.query, "directConnection=true"]))
        )
        return urlunsplit((parts.scheme, netloc, parts.path or "/", query, parts.fragment))

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        back = asyncio.create_task(self._pipe(up_reader, writer))
        try:
            while True:
                header = await reader.readexactly(16)
                length, _, _, op = struct.unpack("<iiii", header)
                body = await reader.readexactly(length - 16)
                self.counts[command_name(op, body)] += 1
                up_writer.write(header + body)
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            back.cancel()
            for w in (writer, up_writer):
                w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass


async def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="the server's MongoDB URL")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds before counting")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds to count")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the process to run")
    args = ap.parse_args()
    cmd = [c for c in args.command if c != "--"]
    counter = await WireCounter(urlsplit(args.url).netloc.rsplit("@", 1)[-1].split(",")[0]).start()
    env = dict(os.environ, MONGODB_URL=counter.url(args.url))
    proc = await asyncio.create_subprocess_exec(*cmd, env=env) if cmd else None
    try:
        await asyncio.sleep(args.settle)
        counter.reset()
        await asyncio.sleep(args.seconds)
        total = counter.rate()
        print(f"{total:.2f} commands/s over {args.seconds:.0f} s")
        for name, n in counter.counts.most_common():
            print(f"  {name:<24} {n / args.seconds:.2f}/s")
    finally:
        if proc:
            proc.terminate()
            await proc.wait()
        await counter.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
