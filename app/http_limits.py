"""Slow clients: how long the API server waits for a request's header and body, and how many
connections it holds. This module owns the uvicorn protocol class `switchyard serve` runs.

uvicorn bounds only the idle time between requests (`timeout_keep_alive`); a client that
sends its request line or headers one byte every few seconds, or announces a body and never
sends it, would hold its connection (and a socket, and a slot under the connection cap)
indefinitely. The protocol here gives each request two deadlines, counted in total, not
between reads, so trickling bytes does not extend them:

- header: the request line and all headers within `http_header_timeout_seconds` of the
  connection opening or, on a kept-alive connection, of the request's first byte; else the
  server answers 408, ends its side of the connection, drops whatever still arrives and
  closes `LINGER` seconds later (closing a socket with unread bytes sends a reset, which can
  discard the 408 before the client has read it); its place under the cap is free at once;
- body: the whole body within `http_body_timeout_seconds` of the end of the headers; else
  the connection is closed and the application's `receive()` sees a disconnect.

The connection cap is uvicorn's `limit_concurrency` (`http_max_connections`): a request on a
connection beyond it gets 503 and the connection is closed. Half-open connections count
towards the cap, which is why the header deadline matters: it is what frees their places.
A WebSocket upgrade leaves this protocol at the end of its headers and gets no body deadline.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import Settings

LINGER = 1.0  # seconds a connection cut with 408 stays open for its client to read the answer
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 15\r\nconnection: close\r\n\r\nRequest Timeout"
)


class DeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a header deadline and a body deadline per request.

    Invariant: at most one deadline is armed at a time (`_deadline`), and none once the
    connection is lost."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._cut = False  # answered 408: what still arrives is dropped

    def data_received(self, data: bytes) -> None:
        if not self._cut:
            super().data_received(data)

    def _arm(self, seconds: float, on_expiry) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, on_expiry)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, self._header_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a kept-alive connection's next request: counts from its first byte
            self._arm(self.header_timeout, self._header_expired)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        # Pipelined requests wait with reading paused: their body is not late, just queued.
        if not (self.parser.should_upgrade() and self._should_upgrade()) and not self.pipeline:
            self._arm(self.body_timeout, self._body_expired)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # expiries
    def _header_expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.logger.warning("Request header not received within %s s; closing the connection.", self.header_timeout)
        if (self.cycle is None or self.cycle.response_complete) and self.transport.can_write_eof():
            # no response of ours is being written
            self._cut = True
            self.connections.discard(self)  # its place under the cap is free at once
            self.transport.write(_REQUEST_TIMEOUT)
            self.transport.write_eof()
            self.loop.call_later(LINGER, self.transport.close)
        else:
            self.transport.close()

    def _body_expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.logger.warning("Request body not received within %s s; closing the connection.", self.body_timeout)
        self.transport.close()  # connection_lost tells the application (http.disconnect)


def protocol_for(settings: Settings) -> type[DeadlineProtocol]:
    """The protocol class with `settings`' deadlines (uvicorn instantiates it per connection)."""
    return type(
        "SwitchyardHTTP",
        (DeadlineProtocol,),
        {"header_timeout": settings.http_header_timeout_seconds, "body_timeout": settings.http_body_timeout_seconds},
    )


def uvicorn_options(settings: Settings) -> dict:
    """The keyword arguments of `uvicorn.run`/`uvicorn.Config` that bound slow clients."""
    return {"http": protocol_for(settings), "limit_concurrency": settings.http_max_connections}
