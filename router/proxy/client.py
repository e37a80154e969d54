"""Client side of the data plane: one client connection's protocol.

``ClientConnection`` parses requests with httptools (llhttp, strict), validates each head
before anything reaches a region, builds the upstream head once, and hands the request to
an ``Exchange``; it keeps pipelined requests in order, answers refusals itself (JSON,
``X-Router-Error``), and splices WebSocket tunnels.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from time import monotonic
from typing import TYPE_CHECKING

import httptools

from router.errors import BadRequest, BodyTooLarge, HeadersTooLarge, ProxyError
from router.proxy.exchange import Exchange
from router.proxy.headers import (
    FRAMING_LOOKALIKES,
    IDEMPOTENT_METHODS,
    TRAILER_DROP,
    connection_tokens,
    error_response,
    forwarded_fields,
    framing_field,
    named_headers,
    valid_host,
)
from router.proxy.paths import normalize_path, split_target
from router.proxy.response import ResponseRelay
from router.proxy.upstream import UpstreamConnection
from router.state.snapshot import Snapshot

if TYPE_CHECKING:
    from router.proxy.core import ProxyCore

# ClientConnection.feeding: outside feed_data; inside it; inside it, and this read began a
# request before any request completed (so the read starts with that request); inside it,
# and a request completed during this read.
_IDLE, _FEEDING, _BEGUN, _COMPLETED = 0, 1, 2, 3
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class ClientConnection(asyncio.Protocol):
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
        self._cork: list[bytes] | None = None
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
        self._reset_head()

    def _reset_head(self) -> None:
        self.url = b""
        self.lines: list[bytes] = []
        self.head_bytes = 0
        self.host: bytes | None = None
        self.content_length = -1
        self.chunked = False
        self.conn_tokens: frozenset[bytes] | None = None
        self.upgrade_value: bytes | None = None
        self.xff: bytes | None = None
        self.request_id: bytes | None = None
        self.expect: bytes | None = None
        self.idempotency_key = False
        self.cookie: bytes | None = None
        self.affinity_value: bytes | None = None
        self.geo_value: bytes | None = None

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
                corked.uncork()
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
        self._reset_head()
        if self.feeding == _FEEDING:
            self.feeding = _BEGUN  # this read starts the request (see _custom_method)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > self.core.max_header_bytes:
            raise HeadersTooLarge(f"request head exceeds {self.core.max_header_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        core = self.core
        if self.head_bytes > core.max_header_bytes:
            raise HeadersTooLarge(f"request head exceeds {core.max_header_bytes} bytes")
        lname = name.lower()
        if not self.in_head:
            # A trailer of a chunked body: never read as a request header; passed on
            # after the last chunk unless it is a framing or hop-by-hop field.
            ex = self.parsing
            if ex is not None and lname not in TRAILER_DROP:
                ex.req_trailers.append(b"%b: %b\r\n" % (name, value))
            return
        if lname not in core.interesting:
            self.lines.append(b"%b: %b\r\n" % (name, value))
            return
        if lname in core.watched:
            if lname == b"cookie":
                self.cookie = value
            elif lname == b"idempotency-key":
                self.idempotency_key = True
            elif lname == core.affinity_header:
                self.affinity_value = value
            if lname == core.geo_header:
                self.geo_value = value
            self.lines.append(b"%b: %b\r\n" % (name, value))
            return
        if lname == b"host":
            if self.host is not None:
                raise BadRequest("more than one Host header")
            self.host = value
        elif lname == b"content-length":
            self.content_length = int(value)
        elif lname == b"transfer-encoding":
            # llhttp frames by a final "chunked"; other codings would reach the region
            # without their label once re-framed, so refuse them (as nginx does).
            if value.strip().lower() != b"chunked":
                raise BadRequest("unsupported Transfer-Encoding (only chunked)")
            self.chunked = True
        elif lname == b"connection":
            tokens = connection_tokens(value)
            self.conn_tokens = tokens if self.conn_tokens is None else self.conn_tokens | tokens
        elif lname == b"upgrade":
            self.upgrade_value = value
        elif lname == b"x-forwarded-for":
            self.xff = value if self.xff is None else self.xff + b", " + value
        elif lname == b"x-request-id":
            if 0 < len(value) <= 200:
                self.request_id = value
        elif lname == b"expect":
            self.expect = value.lower()
        elif lname == b"te" and value.strip().lower() == b"trailers":
            self.lines.append(b"TE: trailers\r\n")
        elif lname in FRAMING_LOOKALIKES:
            raise BadRequest(f"header {name.decode('latin-1')!r} could be read as a framing header")
        # everything else in REQUEST_SPECIAL is hop-by-hop or rewritten: dropped

    def on_headers_complete(self) -> None:
        core = self.core
        parser = self.parser
        self.in_head = False
        self.head_fed = 0
        if self.framing_head:  # the body framing of an Upgrade request (_after_upgrade)
            self.framing_head = False
            return
        method = parser.get_method()
        if self.method_override is not None:
            method, self.method_override = self.method_override, None
        version = parser.get_http_version()
        self.http11 = version == "1.1"
        if not self.http11:
            if version != "1.0":
                raise BadRequest(f"unsupported HTTP version {version}")
            if self.chunked:
                # RFC 9112 6.1: the connection must close after it; refused, as nginx does.
                raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if method == b"CONNECT":
            raise BadRequest("CONNECT is not supported: this is a reverse proxy")
        target, authority = split_target(self.url)
        host = self.host
        if host is None:
            if self.http11:
                raise BadRequest("missing Host header")
            host = authority or b""
        elif not valid_host(host):
            raise BadRequest("invalid Host header")
        if authority is not None and authority != host.lower():
            raise BadRequest("absolute-form target names another host; this is not a forward proxy")
        snapshot: Snapshot = core.holder.current
        if b"." in target or b"%" in target or core.has_routes:
            path = normalize_path(target)  # also rejects climbing above the root
        else:
            path = ""
        plan = core.plan_for(snapshot, host, path) if core.has_routes else snapshot.default_plan
        has_body = self.chunked or self.content_length > 0
        if self.content_length > core.max_body_bytes:
            raise BodyTooLarge(f"request body exceeds {core.max_body_bytes} bytes")
        upgrade = False
        if parser.should_upgrade():
            # Only a WebSocket handshake (GET, no body) becomes a tunnel. llhttp skips the
            # body of any request asking to upgrade: for the others, note its framing so
            # the body is parsed and forwarded (see _after_upgrade).
            upgrade = (
                method == b"GET"
                and self.http11
                and not has_body
                and self.upgrade_value is not None
                and self.upgrade_value.strip().lower() == b"websocket"
            )
            if has_body and not upgrade:
                self.skipped_body = (
                    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    if self.chunked
                    else b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % self.content_length
                )
        request_id = self.request_id or core.next_request_id()

        lines = self.lines
        if self.conn_tokens:
            named = named_headers(self.conn_tokens)
            if named:
                lines = [ln for ln in lines if ln.split(b":", 1)[0].lower() not in named]
        xff = self.peer if self.xff is None else self.xff + b", " + self.peer
        lines.append(forwarded_fields(xff, self.proto, host, request_id))
        lines.append(framing_field(self.chunked, self.content_length))
        if upgrade:
            lines.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
        lines.append(b"\r\n")
        info = core.request_info(self.cookie, self.affinity_value, self.geo_value)
        ex = ResponseRelay(
            core,
            self,
            method=method,
            method_label=core.method_label(method),
            request_line=b"%b %b HTTP/1.1\r\n" % (method, target),
            head_common=b"".join(lines),
            upstream_host=host if core.preserve_host else None,
            chunked_request=self.chunked,
            has_body=has_body,
            keep_alive=parser.should_keep_alive(),
            upgrade=upgrade,
            idempotent=method in IDEMPOTENT_METHODS or self.idempotency_key,
            request_id=request_id,
            snapshot=snapshot,
            plan=plan,
            info=info,
            now=monotonic(),
        )
        if self.expect == b"100-continue" and has_body and self.http11:
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
        elif self.transport is not None and not self.closed:
            self.transport.write(data)

    def cork(self) -> None:
        if self._cork is None:
            self._cork = []

    def uncork(self) -> None:
        out, self._cork = self._cork, None
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

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
        self.write(error_response(error, self.request_id, close=True))
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
