"""Upstream side of the data plane: one keep-alive HTTP/1.1 connection to a region.

An ``UpstreamConnection`` parses responses with httptools and forwards every event to the
exchange bound to it (a ``ResponseSink``); between requests it sits idle in its region's
pool (router/proxy/pool.py), which opens and closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import monotonic
from typing import Any

import httptools

from router.proxy.interfaces import ClientSide

# A read at least this long that starts a response is parsed head first, so that a
# Content-Length body after the head is relayed without httptools copying it (on_body makes
# a bytes per chunk: about 3 us per 64 KiB here). The head is looked for in its first
# _HEAD_WINDOW bytes only; a longer head is parsed the ordinary way.
_RAW_MIN = 4096
_HEAD_WINDOW = 8192


class ResponseSink:
    """What an upstream connection delivers a response to: an exchange
    (``router.proxy.exchange.Exchange``), or a hedged copy of one until it wins
    (``router.proxy.hedging.HedgeTry``).

    A base class, not a Protocol: this module sits below both, and compiled, a native base
    keeps struct reads and vtable calls where a Protocol costs a generic lookup
    (docs/architecture.md, bench/mypyc_protocol.py).
    """

    __slots__ = ("client", "head_only_done", "relay_length", "resp_headers", "resp_reason")

    client: ClientSide  # corked per upstream read; paused by upstream backpressure
    resp_reason: bytes
    resp_headers: list[tuple[bytes, bytes]]
    head_only_done: bool  # a HEAD answer: no body follows, the message is complete
    # Set by on_response_head: a Content-Length body of this many bytes follows that goes
    # to the client as it comes (on_response_raw may get it unparsed); 0: parse the body.
    relay_length: int

    def on_response_head(self, status: int) -> None:
        raise NotImplementedError

    def on_response_body(self, data: bytes) -> None:
        raise NotImplementedError

    def on_response_raw(self, data: bytes, start: int) -> None:
        """``data[start:]``: body bytes of the relay_length body, not seen by the parser."""
        raise NotImplementedError

    def on_response_trailer(self, name: bytes, value: bytes) -> None:
        raise NotImplementedError

    def on_response_complete(self) -> None:
        raise NotImplementedError

    def on_upgrade_data(self, rest: bytes) -> None:
        raise NotImplementedError

    def on_upstream_protocol_error(self, message: str) -> None:
        raise NotImplementedError

    def on_upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        raise NotImplementedError


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_on_lost",
        "address",
        "at_head",
        "body_left",
        "born",
        "closed",
        "corked",
        "corked_bytes",
        "deferred",
        "exchange",
        "host",
        "idle_since",
        "in_trailers",
        "key",
        "parser",
        "raw_ok",
        "reused",
        "transport",
        "tunnel",
    )

    def __init__(
        self, key: str, host: str, address: str, on_lost: Callable[[UpstreamConnection], None]
    ) -> None:
        self.key = key  # the pool's idle list: endpoint URL and address
        self.host = host
        self.address = address
        self.born = monotonic()  # dns.max_connection_age counts from here
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.exchange: ResponseSink | None = None  # an exchange, or a hedge until it wins
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.in_trailers = False  # past the head: header fields now are chunked trailers
        self.reused = False
        self.idle_since = 0.0
        self.tunnel: Any = None  # the client connection once a WebSocket is tunnelled
        self.corked: list[bytes] | None = None  # writes held until the client read is parsed
        self.corked_bytes = 0
        self.deferred = False  # in the loop pass's WriteBatch (router.proxy.batching)
        self.at_head = True  # the parser is between responses: the next byte starts a head
        self.raw_ok = False  # parsing a head alone: its body may be relayed unparsed
        self.body_left = 0  # bytes of a body being relayed unparsed (the parser is left behind)

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.tunnel_write(data)
            return
        ex = self.exchange
        if ex is None:
            # Bytes on an idle connection: the upstream is confused; never reuse it.
            self.close()
            return
        client = ex.client
        client.last_active = monotonic()  # a body in progress is not idle
        client.cork()  # one write to the client per upstream read, not one per event
        try:
            if self.body_left:
                self._relay(ex, data, 0)
            else:
                self._parse(data)
        finally:
            client.uncork_later()

    def _parse(self, data: bytes) -> None:
        base = 0  # where in ``data`` the bytes last fed to the parser start
        try:
            if self.at_head and len(data) >= _RAW_MIN:
                end = data.find(b"\r\n\r\n", 0, _HEAD_WINDOW)
                if end > 0:
                    # The head alone first: if it promises a body the exchange relays as
                    # is, the rest of the read goes to the client without the parser.
                    cut = end + 4
                    self.raw_ok = True
                    try:
                        self.parser.feed_data(data[:cut])
                    finally:
                        self.raw_ok = False
                    ex = self.exchange
                    if self.body_left:
                        if ex is not None:
                            self._relay(ex, data, cut)
                            return
                        self.body_left = 0  # nobody takes it: the parser reads it
                    base = cut
                    self.parser.feed_data(memoryview(data)[cut:])
                else:
                    self.parser.feed_data(data)
            else:
                self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            if self.exchange is not None:
                self.exchange.on_upgrade_data(data[base + upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            if self.exchange is not None:
                self.exchange.on_upstream_protocol_error(f"invalid response from upstream: {exc}")
        else:
            # Read again: a hedge that won hands this connection to its exchange mid-feed.
            ex = self.exchange
            if ex is not None and ex.head_only_done:
                ex.on_response_complete()

    def _relay(self, ex: ResponseSink, data: bytes, start: int) -> None:
        """``data[start:]`` continues a body relayed unparsed; the response ends with it."""
        size = len(data) - start
        left = self.body_left
        if size < left:
            self.body_left = left - size
            ex.on_response_raw(data, start)
            return
        self.body_left = 0
        if size == left:
            ex.on_response_raw(data, start)
        else:
            # Bytes past the promised length: a confused region. The response is whole;
            # the connection is not reused (as for bytes that arrive while it is idle).
            ex.on_response_raw(data[start : start + left], 0)
            self.close()
        # The parser still holds this response's head (on_response_complete asks it whether
        # the connection may be reused); the next response gets a new one.
        ex.on_response_complete()
        self.reset_parser()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.tunnel_closed()
        ex = self.exchange
        self.exchange = None
        self._on_lost(self)
        if ex is not None:
            ex.on_upstream_lost(self, exc)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_reading_for("tunnel")
        elif self.exchange is not None:
            self.exchange.client.pause_reading_for("upstream")

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.resume_reading_for("tunnel")
        elif self.exchange is not None:
            self.exchange.client.resume_reading_for("upstream")

    # -- httptools callbacks (forwarded to the exchange) -------------------------------

    def on_status(self, reason: bytes) -> None:
        if self.exchange is not None:
            self.exchange.resp_reason = reason

    def on_message_begin(self) -> None:
        self.in_trailers = False
        self.at_head = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.exchange is not None:
            if self.in_trailers:
                self.exchange.on_response_trailer(name, value)
            else:
                self.exchange.resp_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_trailers = True
        ex = self.exchange
        if ex is not None:
            ex.relay_length = 0
            ex.on_response_head(self.parser.get_status_code())
            ex = self.exchange  # a hedge that won has handed this connection over
            if ex is not None and ex.relay_length:
                if self.raw_ok:
                    self.body_left = ex.relay_length
                ex.relay_length = 0

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.on_response_body(body)

    def on_message_complete(self) -> None:
        self.at_head = True
        if self.exchange is not None:
            self.exchange.on_response_complete()

    # -- control -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        out = self.corked
        if out is not None:
            out.append(data)
            self.corked_bytes += len(data)
        elif self.usable():
            self.transport.write(data)  # type: ignore[union-attr]  # usable() checked it
        # else: the peer already reset it; connection_lost follows and fails the attempt

    def uncork(self) -> None:
        out, self.corked = self.corked, None
        self.corked_bytes = 0
        if out and self.usable():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]  # usable() checked it

    def usable(self) -> bool:
        """Open for writing: uvloop closes a reset transport before connection_lost runs."""
        t = self.transport
        return not self.closed and t is not None and not t.is_closing()

    def reset_parser(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.at_head = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
