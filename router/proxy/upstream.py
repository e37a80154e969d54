"""Upstream side of the data plane: one keep-alive HTTP/1.1 connection, and the per-region pool.

An ``UpstreamConnection`` parses responses with httptools and forwards every event to the
exchange bound to it; between requests it sits idle in its region's pool (LIFO, so warm
connections are reused first). Opened in one place (``Pool.connect``), closed in one place
(``Pool.close``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence
from functools import partial
from time import monotonic
from typing import Any, TypeVar

import httptools

from router.config.loader import Endpoint
from router.proxy.dns import Resolver
from router.proxy.interfaces import ClientSide

P = TypeVar("P", bound=asyncio.Protocol)

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
            client.uncork()

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
        elif self.usable():
            self.transport.write(data)  # type: ignore[union-attr]  # usable() checked it
        # else: the peer already reset it; connection_lost follows and fails the attempt

    def uncork(self) -> None:
        out, self.corked = self.corked, None
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


class Pool:
    """Idle keep-alive connections per endpoint address; covers any client concurrency.

    Each request takes the next address of its endpoint's DNS answer (``Resolver.pick``), so
    every address gets traffic, and reuses an idle connection to that address. A connection
    to an address that left the answer, or older than ``dns.max_connection_age``, is closed
    instead of reused (idle ones at once, busy ones when their request ends).
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        idle_timeout_s: float,
        dns: Resolver,
        max_age_s: float,
        max_idle: int = 1024,
    ):
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.dns = dns
        self.max_age_s = max_age_s
        self.max_idle = max_idle
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._all: set[UpstreamConnection] = set()
        self._ssl: dict[str, ssl.SSLContext] = {}
        dns.listeners.append(self._addresses_changed)

    def acquire_idle(self, endpoint: Endpoint) -> UpstreamConnection | None:
        host = endpoint.host
        address = self.dns.pick(host, advance=False)
        if address is None:
            return None  # not resolved yet: connect() waits for the answer
        idle = self._idle.get(f"{endpoint.url} {address}")
        while idle:
            conn = idle.pop()
            if conn.usable():
                conn.reused = True
                self.dns.advance(host)
                return conn
        return None  # connect() takes this turn's address

    async def connect(self, endpoint: Endpoint, ca_file: str | None) -> UpstreamConnection:
        """A new connection to the endpoint's next address (resolving it first if needed)."""
        ctx = self._ssl_context(endpoint, ca_file) if endpoint.scheme == "https" else None
        host = endpoint.host

        async def open_one() -> UpstreamConnection:
            first = self.dns.pick(host) or await self.dns.resolve(host)
            current = self.dns.current(host) or (first,)
            # The address in turn first, then the others (as a connect by name would):
            # "localhost" is often ::1 and 127.0.0.1 with the region on one of them.
            i = current.index(first) if first in current else 0
            return await connect_first(
                lambda address: UpstreamConnection(
                    f"{endpoint.url} {address}", host, address, self._forget
                ),
                current[i:] + current[:i],
                endpoint.port,
                ctx,
                host,
            )

        conn = await asyncio.wait_for(open_one(), self.connect_timeout_s)
        self._all.add(conn)
        return conn

    def release(self, conn: UpstreamConnection, now: float) -> None:
        if conn.closed:
            return
        if now - conn.born > self.max_age_s or not self._in_answer(conn):
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = now
        idle.append(conn)

    def _in_answer(self, conn: UpstreamConnection) -> bool:
        current = self.dns.current(conn.host)
        return current is None or conn.address in current

    def _addresses_changed(self, host: str, addresses: tuple[str, ...]) -> None:
        """Idle connections to addresses that left the answer close now."""
        for idle in self._idle.values():
            gone = [c for c in idle if c.host == host and c.address not in addresses]
            for conn in gone:
                idle.remove(conn)
                conn.close()

    def _forget(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle past the idle timeout or older than the maximum age."""
        limit = now - self.idle_timeout_s
        born_limit = now - self.max_age_s
        for idle in self._idle.values():
            while idle and idle[0].idle_since < limit:
                idle.pop(0).close()
            old = [c for c in idle if c.born < born_limit]
            for conn in old:
                idle.remove(conn)
                conn.close()

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()

    def counts(self) -> dict[str, int]:
        return {key: len(conns) for key, conns in self._idle.items()}

    def _ssl_context(self, endpoint: Endpoint, ca_file: str | None) -> ssl.SSLContext:
        ctx = self._ssl.get(endpoint.url)
        if ctx is None:
            ctx = ssl.create_default_context(cafile=ca_file)
            ctx.set_alpn_protocols(["http/1.1"])
            self._ssl[endpoint.url] = ctx
        return ctx

    def __repr__(self) -> str:
        idle = sum(len(v) for v in self._idle.values())
        return f"<Pool connections={len(self._all)} idle={idle}>"


async def connect_first(
    protocol: Callable[[str], P],
    addresses: Sequence[str],
    port: int,
    ctx: ssl.SSLContext | None,
    host: str,
) -> P:
    """The first of ``addresses`` that accepts, in order, as a connect by name would:
    "localhost" is often ::1 and 127.0.0.1 with the server on one of them. A refused or
    unreachable address gives way to the next; a TLS failure is final."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for address in addresses:
        try:
            _, conn = await loop.create_connection(
                partial(protocol, address),
                address,
                port,
                ssl=ctx,
                server_hostname=host if ctx is not None else None,
            )
        except OSError as exc:
            if isinstance(exc, ssl.SSLError):
                raise
            last = exc
            continue
        return conn
    assert last is not None
    raise last
