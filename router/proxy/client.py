"""Client side of the data plane: one HTTP/1.1 client connection's protocol.

``ClientConnection`` parses requests with httptools (llhttp, strict); each head's fields go
to a ``RequestHead`` (router/proxy/request_head.py), which validates them before anything
reaches a region and builds the exchange. The connection keeps pipelined requests in order,
bounds what llhttp buffers, restarts the parser where llhttp stops (custom methods, Upgrade
requests that are no tunnel), answers refusals itself (JSON, ``X-Router-Error``), applies
backpressure both ways, and splices WebSocket tunnels.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING

import httptools

from router.errors import BadRequest, HeadersTooLarge, ProxyError
from router.proxy.exchange import Exchange
from router.proxy.headers import TRAILER_DROP, error_response
from router.proxy.interfaces import ClientSide
from router.proxy.request_head import RequestHead
from router.proxy.upstream import UpstreamConnection

if TYPE_CHECKING:
    from router.proxy.core import ProxyCore

# ClientConnection.feeding: outside feed_data; inside it; inside it, and this read began a
# request before any request completed (so the read starts with that request); inside it,
# and a request completed during this read.
_IDLE, _FEEDING, _BEGUN, _COMPLETED = 0, 1, 2, 3
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class ClientConnection(ClientSide):
    """One client connection: parse, validate, pipeline, relay, tunnel."""

    def __init__(self, core: ProxyCore, *, tls: bool = False) -> None:
        """``tls``: the connection came in over TLS (X-Forwarded-Proto: https)."""
        self.core = core
        self.proto = b"https" if tls else b"http"
        self.loop = core.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = b""
        self.http11 = True
        self.closed = False
        self.last_active = monotonic()
        self.active: Exchange | None = None  # exchange whose response is being relayed
        self.parsing: Exchange | None = None  # exchange whose request body is being read
        self.queue: deque[Exchange] = deque()  # pipelined requests waiting their turn
        self._paused: set[str] = set()
        self.writing_paused = False
        self.tunnel: UpstreamConnection | None = None
        self._cork: list[bytes | memoryview] | None = None
        self._cork_views = False  # the cork holds a view of a read: write it without a join
        self._cork_bytes = 0
        self._deferred = False  # in the loop pass's WriteBatch (router.proxy.batching)
        self.feeding = _IDLE
        self.corked_upstream: UpstreamConnection | None = None
        self.in_head = True  # between requests or inside a head: bytes are head bytes
        self.head_fed = 0
        self.method_override: bytes | None = None
        self.deferred_error: ProxyError | None = None  # a refusal waiting its turn
        # The framing of a body llhttp skipped (an Upgrade request that is no tunnel), and
        # whether the next head is that framing only (see _after_upgrade).
        self.skipped_body: bytes | None = None
        self.framing_head = False
        self.head = RequestHead()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if peer else b"unknown"
        self.core.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = monotonic()
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.parsing is not None and self.parsing.upgrade:
            self.parsing.tunnel_data(data)  # WebSocket bytes before the 101 arrives
            return
        self.feeding = _FEEDING
        try:
            rest: bytes | None = data
            while rest is not None:
                rest = self._feed(rest)
        finally:
            completed = self.feeding == _COMPLETED
            self.feeding = _IDLE
            corked = self.corked_upstream
            if corked is not None:
                self.corked_upstream = None
                self.core.writes.defer_upstream(corked)
        if self.in_head and not completed:
            # A head still incomplete after a read that held nothing else: bound what
            # llhttp buffers (a header line without its end would otherwise grow forever).
            self.head_fed += len(data)
            if self.head_fed > self.core.max_header_bytes and not self.closed:
                self._reject(
                    HeadersTooLarge(f"request head exceeds {self.core.max_header_bytes} bytes")
                )

    def _feed(self, data: bytes) -> bytes | None:
        """Parse ``data``; returns what a new parser must read next when the parser stopped.

        The caller feeds that outside this ``except``: parsing again inside it would chain
        the handled exception onto a callback's error and hide the ``ProxyError`` cause.
        """
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            return self._after_upgrade(data[exc.args[0] :])
        except httptools.HttpParserInvalidMethodError:
            return self._custom_method(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, ProxyError):
                raise
            self._reject(cause)
        except httptools.HttpParserError as exc:
            self._reject(BadRequest(f"malformed request: {exc}"))
        return None

    def _after_upgrade(self, rest: bytes) -> bytes | None:
        """llhttp stopped after the head of a request that asked to upgrade.

        Only a WebSocket handshake becomes a tunnel: the bytes after it are the tunnel's.
        Any other Upgrade request is an ordinary one (the Upgrade header is not forwarded),
        but llhttp skipped its body: a new parser reads on, first through a head that
        carries only the body's framing, so the body is parsed (chunked included) exactly
        as it would have been, then the requests pipelined after it.
        """
        ex = self.parsing
        if ex is not None and ex.upgrade:
            if rest:
                ex.tunnel_data(rest)
            return None
        if self.closed:
            return None
        self.parser = httptools.HttpRequestParser(self)
        framing, self.skipped_body = self.skipped_body, None
        if framing is None:
            return rest or None
        self.framing_head = True
        return framing + rest

    def _custom_method(self, data: bytes) -> bytes | None:
        """llhttp knows a fixed set of methods; forward any other RFC 9110 token too.

        Only when this read starts the request (the usual case): the method is swapped for
        GET while parsing (request framing does not depend on the method) and restored for
        the upstream. Otherwise, e.g. a second custom method pipelined in the same read,
        the request is refused as malformed.
        """
        token, sep, rest = data.lstrip(b"\r\n").partition(b" ")
        if (
            self.feeding != _BEGUN
            or self.method_override is not None
            or not sep
            or _TOKEN.fullmatch(token) is None
        ):
            self._reject(BadRequest("malformed request: invalid method"))
            return None
        self.method_override = token
        self.parser = httptools.HttpRequestParser(self)
        self.feeding = _FEEDING
        return b"GET " + rest

    def eof_received(self) -> bool | None:
        # The client closed (or half-closed) its side: like nginx, take it as gone and
        # cancel what it asked for rather than keep a region busy for nobody.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.core.connections.discard(self)
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.tunnel = None
            tunnel.close()
        for ex in (self.active, *self.queue):
            if ex is not None:
                ex.client_lost()
        self.active = None
        self.queue.clear()

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.last_active = monotonic()  # idle counts from here if the client stops reading
        conn = self.tunnel or (self.active.upstream if self.active is not None else None)
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.last_active = monotonic()
        conn = self.tunnel or (self.active.upstream if self.active is not None else None)
        if conn is not None and conn.transport is not None:
            conn.transport.resume_reading()

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.head = RequestHead()
        if self.feeding == _FEEDING:
            self.feeding = _BEGUN  # this read starts the request (see _custom_method)

    def on_url(self, url: bytes) -> None:
        head = self.head
        head.url += url
        head.size += len(url)
        if head.size > self.core.max_header_bytes:
            raise HeadersTooLarge(f"request head exceeds {self.core.max_header_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self.head
        head.size += len(name) + len(value) + 4
        core = self.core
        if head.size > core.max_header_bytes:
            raise HeadersTooLarge(f"request head exceeds {core.max_header_bytes} bytes")
        lname = name.lower()
        if not self.in_head:
            # A trailer of a chunked body: never read as a request header; passed on
            # after the last chunk unless it is a framing or hop-by-hop field.
            ex = self.parsing
            if ex is not None and lname not in TRAILER_DROP:
                ex.req_trailers.append(b"%b: %b\r\n" % (name, value))
            return
        if lname in core.interesting:
            head.add_special(name, lname, value, core)
        else:
            head.lines.append(b"%b: %b\r\n" % (name, value))  # forwarded as it is

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.in_head = False
        self.head_fed = 0
        if self.framing_head:  # the body framing of an Upgrade request (_after_upgrade)
            self.framing_head = False
            return
        method = parser.get_method()
        if self.method_override is not None:
            method, self.method_override = self.method_override, None
        head = self.head
        version = parser.get_http_version()
        http11 = self.http11 = version == "1.1"
        head.check(method, version)
        route = head.route(self.core, http11)
        upgrade = False
        if parser.should_upgrade():
            # Only a WebSocket handshake (GET, no body) becomes a tunnel. llhttp skips the
            # body of any request asking to upgrade: for the others, note its framing so
            # the body is parsed and forwarded (see _after_upgrade).
            upgrade = head.websocket(method, http11)
            if not upgrade:
                self.skipped_body = head.body_framing()
        ex = head.exchange(
            self.core,
            self,
            method,
            route,
            keep_alive=parser.should_keep_alive(),
            upgrade=upgrade,
            peer=self.peer,
            proto=self.proto,
        )
        if head.expect == b"100-continue" and head.has_body and http11:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.parsing = ex
        if self.active is None:
            self.active = ex
            ex.start()
        else:
            self.queue.append(ex)
            self.pause_reading_for("pipeline")

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None and not ex.done:
            ex.feed_body(body)

    def on_message_complete(self) -> None:
        if self.skipped_body is not None:
            return  # llhttp skipped this body; the framing parser ends the message
        self.in_head = True
        self.feeding = _COMPLETED
        ex = self.parsing
        if ex is not None:
            if not ex.upgrade:
                self.parsing = None
            if not ex.done:
                ex.body_complete()
            else:
                ex.body_done = True

    # -- helpers -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        out = self._cork
        if out is not None:
            out.append(data)
            self._cork_bytes += len(data)
        elif self.transport is not None and not self.closed:
            self.transport.write(data)

    def write_from(self, data: bytes, start: int) -> None:
        """A body as read after its head: a view, so its bytes are copied only by the kernel."""
        view = memoryview(data)[start:]
        out = self._cork
        if out is not None:
            out.append(view)
            self._cork_views = True
            self._cork_bytes += len(view)
        elif self.transport is not None and not self.closed:
            self.transport.write(view)

    def cork(self) -> None:
        if self._cork is None:
            self._cork = []

    def uncork(self) -> None:
        out, self._cork = self._cork, None
        self._cork_bytes = 0
        if out and self.transport is not None and not self.closed:
            if len(out) == 1:
                self.transport.write(out[0])
            elif self._cork_views:
                self.transport.writelines(out)  # one writev; a join would copy the body
            else:
                self.transport.write(b"".join(out))
        self._cork_views = False

    def uncork_later(self) -> None:
        """Small writes wait for the end of the loop's pass (router.proxy.batching)."""
        if not self._cork:
            self._cork = None  # nothing corked: later writes go straight out
        elif self._deferred:
            pass  # already held: the flush writes what was added since
        elif self.core.writes.hold_client(self, self._cork_bytes):
            self._deferred = True
        else:
            self.uncork()

    def flush_deferred(self) -> None:
        self._deferred = False
        self.uncork()

    def cork_upstream(self, conn: UpstreamConnection) -> None:
        """Hold writes to ``conn`` until the current client read is fully parsed."""
        if self.feeding and self.corked_upstream is None:
            conn.corked = []
            self.corked_upstream = conn

    def pause_reading_for(self, reason: str) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume_reading_for(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def exchange_finished(self, ex: Exchange, close: bool) -> None:
        if ex is not self.active:
            return
        self.active = None
        self.last_active = monotonic()
        if close or self.core.draining:
            self.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            if not self.queue:
                self.resume_reading_for("pipeline")
            self.active = nxt
            nxt.start()
        elif self.deferred_error is not None:
            self._send_error(self.deferred_error)
            self.close()
        else:
            self.resume_reading_for("pipeline")

    def _reject(self, error: ProxyError) -> None:
        """Answer a request the router refuses itself, then close (the stream is unusable).

        Responses keep request order: when requests ahead of the bad one are still being
        answered, the error waits for them (reading stays paused meanwhile).
        """
        if self.closed or self.deferred_error is not None:
            return
        ex = self.parsing  # the request whose body failed; None when a head failed
        self.parsing = None
        if ex is not None and ex is self.active:
            if ex.resp_started:
                self.close()  # mid-response: closing is the only signal left
                return
            self._send_error(error)
            ex.client_lost()
            self.close()
            return
        if ex is not None:  # queued behind the active request, never started
            self.queue.remove(ex)
            ex.client_lost()
        if self.active is None:
            self._send_error(error)
            self.close()
        else:
            self.deferred_error = error
            self.pause_reading_for("error")

    def _send_error(self, error: ProxyError) -> None:
        self.write(error_response(error, self.head.request_id, close=True))
        self.core.stats.record("none", "OTHER", str(error.status), 0.0)

    def start_tunnel(
        self, conn: UpstreamConnection, upstream_rest: bytes, pending: list[bytes]
    ) -> None:
        self.tunnel = conn
        conn.tunnel = self
        self.parsing = None
        if upstream_rest:
            self.write(upstream_rest)
        for chunk in pending:
            conn.write(chunk)

    def tunnel_write(self, data: bytes) -> None:
        self.last_active = monotonic()
        self.write(data)

    def tunnel_closed(self) -> None:
        self.tunnel = None
        self.close()

    def idle_timeout(self) -> None:
        """No byte moved for ``timeouts.idle`` (the sweeper calls this)."""
        ex = self.active
        if ex is None or self.tunnel is not None:
            self.close()
        elif ex.upstream is not None and ex not in self.core.awaiting:
            # A body (either way) stalled: a client that stopped reading or sending, or a
            # region that stopped mid-body. Abort: a graceful close would wait on the
            # stuck buffer forever. The upstream request is cancelled with it.
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.uncork()
            self.closed = True
            self.transport.close()

    def __repr__(self) -> str:
        return f"<ClientConnection peer={self.peer.decode()} active={self.active!r}>"
