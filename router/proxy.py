"""Client side of the data plane: the per-connection protocol and the shared proxy core.

``ClientConnection`` parses requests with httptools (llhttp, strict), validates each head
before anything reaches a region, and hands the request to an ``Exchange``. ``ProxyCore``
holds what every connection shares: the snapshot holder, selector, upstream pool, counters,
and settings decided once at config load.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections import deque
from collections.abc import Callable
from time import monotonic

import httptools

from router.config import Config
from router.errors import BadRequest, BodyTooLarge, HeadersTooLarge, ProxyError
from router.exchange import Exchange
from router.headers import (
    HOP_BY_HOP,
    IDEMPOTENT_METHODS,
    KNOWN_METHODS,
    REQUEST_SPECIAL,
    RESPONSE_SPECIAL,
    connection_tokens,
    error_response,
)
from router.load import LoadTable
from router.metrics import TrafficStats
from router.paths import normalize_path, split_target
from router.snapshot import RoutePlan, Snapshot, SnapshotHolder
from router.strategies import RequestInfo, Selector
from router.upstream import Pool, UpstreamConnection

Observer = Callable[[str, bool, str], None]  # (region id, ok, failure kind)
AccessLog = Callable[[Exchange, int, float, bool, str | None], None]


def _ignore(region_id: str, ok: bool, kind: str) -> None:
    return None


# ClientConnection.feeding: outside feed_data; inside it; inside it, and this read began a
# request before any request completed (so the read starts with that request); inside it,
# and a request completed during this read.
_IDLE, _FEEDING, _BEGUN, _COMPLETED = 0, 1, 2, 3
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class ProxyCore:
    """Shared by every client connection of one process."""

    def __init__(
        self,
        holder: SnapshotHolder,
        *,
        loop: asyncio.AbstractEventLoop,
        observer: Observer = _ignore,
        access_log: AccessLog | None = None,
    ) -> None:
        self.holder = holder
        self.loop = loop
        self.loads = LoadTable()
        self.selector = Selector(self.loads)
        self.stats = TrafficStats()
        self.observer = observer
        self.access_log = access_log
        self.connections: set[ClientConnection] = set()
        self.awaiting: set[Exchange] = set()  # exchanges waiting for response headers
        self.inflight = 0
        self.retries_active = 0
        self.draining = False
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(6).hex().encode()
        self._method_labels: dict[bytes, str] = {}
        cfg = holder.current.config
        self.pool = Pool(
            connect_timeout_s=cfg.timeouts.connect_s, idle_timeout_s=cfg.timeouts.idle_s
        )
        self.apply_config(cfg)

    def apply_config(self, cfg: Config) -> None:
        """Settings read per request, decided once per config."""
        self.config = cfg
        self.max_header_bytes = cfg.limits.max_header_bytes
        self.max_body_bytes = cfg.limits.max_body_bytes
        self.preserve_host = cfg.preserve_host
        self.region_header = cfg.response_headers.region
        self.request_id_header = cfg.response_headers.request_id
        # The router's own response headers replace any the region sent.
        self.response_drop = (
            RESPONSE_SPECIAL
            | ({b"x-router-region"} if self.region_header else set())
            | ({b"x-request-id"} if self.request_id_header else set())
        )
        self.response_headers_timeout_s = cfg.timeouts.response_headers_s
        self.idle_timeout_s = cfg.timeouts.idle_s
        r = cfg.retries
        self.max_retries = r.max_retries
        self.retry_conditions = r.on_conditions
        self.retry_statuses = r.on_statuses
        self.retry_budget_fraction = r.budget_percent / 100.0
        self.retry_min_concurrent = r.min_concurrent
        self.buffer_body_max_bytes = r.buffer_body_max_bytes
        self.retry_backoff_base_s = r.backoff_base_s
        self.retry_backoff_max_s = r.backoff_max_s
        self.pool.connect_timeout_s = cfg.timeouts.connect_s
        self.pool.idle_timeout_s = cfg.timeouts.idle_s
        aff = cfg.affinity
        self.affinity_cookie = aff.cookie.encode() if aff and aff.cookie else None
        self.affinity_header = aff.header.lower().encode() if aff and aff.header else None
        self._cookie_suffix = (
            b"; Max-Age=%d" % int(aff.cookie_max_age_s) if aff and aff.cookie_max_age_s else b""
        )
        self.geo_header = (
            cfg.geo.header.lower().encode()
            if cfg.strategy == "geo" or any(rt.strategy == "geo" for rt in cfg.routes)
            else None
        )
        watch = {b"idempotency-key", b"cookie"}
        if self.affinity_header:
            watch.add(self.affinity_header)
        if self.geo_header:
            watch.add(self.geo_header)
        self.watched = frozenset(watch)
        self.interesting = REQUEST_SPECIAL | self.watched
        self.has_routes = bool(cfg.routes)

    def next_request_id(self) -> bytes:
        return b"%b-%x" % (self._id_prefix, next(self._ids))

    def method_label(self, method: bytes) -> str:
        label = self._method_labels.get(method)
        if label is None:
            text = method.decode("latin-1")
            label = text if text in KNOWN_METHODS else "OTHER"
            if len(self._method_labels) < 64:
                self._method_labels[method] = label
        return label

    def affinity_cookie_header(self, region_id: str) -> bytes:
        assert self.affinity_cookie is not None
        return b"Set-Cookie: %b=%b; Path=/; HttpOnly; SameSite=Lax%b\r\n" % (
            self.affinity_cookie,
            region_id.encode(),
            self._cookie_suffix,
        )

    def sweep(self) -> None:
        """Timeouts without a timer per request: response-header deadlines, idle clients."""
        now = monotonic()
        for ex in [e for e in self.awaiting if e.deadline <= now]:
            self.awaiting.discard(ex)
            ex.on_timeout()
        idle_limit = now - self.idle_timeout_s
        for conn in [c for c in self.connections if c.last_active < idle_limit]:
            conn.idle_timeout()
        self.pool.sweep(now)

    def __repr__(self) -> str:
        return (
            f"<ProxyCore connections={len(self.connections)} inflight={self.inflight} "
            f"{self.pool!r}>"
        )


class ClientConnection(asyncio.Protocol):
    """One client connection: parse, validate, pipeline, relay, tunnel."""

    def __init__(self, core: ProxyCore) -> None:
        self.core = core
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
        self._reset_head()

    def _reset_head(self) -> None:
        self.url = b""
        self.lines: list[bytes] = []
        self.head_bytes = 0
        self.host: bytes | None = None
        self.content_length = -1
        self.chunked = False
        self.conn_tokens: set[bytes] | None = None
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
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_stopped(exc, data)
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

    def _parse_stopped(self, exc: Exception, data: bytes) -> None:
        """The parser stopped inside ``data``: an upgrade, a custom method, or an error."""
        if isinstance(exc, httptools.HttpParserUpgrade):
            ex = self.parsing
            rest = data[exc.args[0] :]
            if ex is not None and ex.upgrade:
                if rest:
                    ex.tunnel_data(rest)
            elif rest:
                self._reject(BadRequest("unexpected data after an upgrade request"))
        elif isinstance(exc, httptools.HttpParserInvalidMethodError):
            self._custom_method(data)
        elif isinstance(exc, httptools.HttpParserCallbackError):
            cause = exc.__context__
            if not isinstance(cause, ProxyError):
                raise exc
            self._reject(cause)
        else:
            self._reject(BadRequest(f"malformed request: {exc}"))

    def _custom_method(self, data: bytes) -> None:
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
            return
        self.method_override = token
        self.parser = httptools.HttpRequestParser(self)
        patched = b"GET " + rest
        self.feeding = _FEEDING
        try:
            self.parser.feed_data(patched)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_stopped(exc, patched)

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
        # everything else in REQUEST_SPECIAL is hop-by-hop or rewritten: dropped

    def on_headers_complete(self) -> None:
        core = self.core
        parser = self.parser
        self.in_head = False
        self.head_fed = 0
        method = parser.get_method()
        if self.method_override is not None:
            method, self.method_override = self.method_override, None
        version = parser.get_http_version()
        self.http11 = version == "1.1"
        if not self.http11 and version != "1.0":
            raise BadRequest(f"unsupported HTTP version {version}")
        if method == b"CONNECT":
            raise BadRequest("CONNECT is not supported: this is a reverse proxy")
        target, authority = split_target(self.url)
        host = self.host
        if host is None:
            if self.http11:
                raise BadRequest("missing Host header")
            host = authority or b""
        if authority is not None and authority != host.lower():
            raise BadRequest("absolute-form target names another host; this is not a forward proxy")
        snapshot: Snapshot = core.holder.current
        if b"." in target or b"%" in target or core.has_routes:
            path = normalize_path(target)  # also rejects climbing above the root
        else:
            path = ""
        plan = self._plan(snapshot, host, path) if core.has_routes else snapshot.default_plan
        has_body = self.chunked or self.content_length > 0
        if self.content_length > core.max_body_bytes:
            raise BodyTooLarge(f"request body exceeds {core.max_body_bytes} bytes")
        upgrade = False
        if self.upgrade_value is not None and parser.should_upgrade():
            upgrade = self.upgrade_value.strip().lower() == b"websocket"
        request_id = self.request_id or core.next_request_id()

        lines = self.lines
        if self.conn_tokens:
            named = self.conn_tokens - HOP_BY_HOP
            if named:
                lines = [ln for ln in lines if ln.split(b":", 1)[0].lower() not in named]
        xff = self.peer if self.xff is None else self.xff + b", " + self.peer
        lines.append(
            b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: %b\r\n"
            b"X-Request-ID: %b\r\n" % (xff, host, request_id)
        )
        if self.chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif self.content_length >= 0:
            lines.append(b"Content-Length: %d\r\n" % self.content_length)
        if upgrade:
            lines.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
        lines.append(b"\r\n")
        info = self._request_info()
        ex = Exchange(
            core,
            self,
            method=method,
            method_label=core.method_label(method),
            request_line=b"%b %b HTTP/1.1\r\n" % (method, target),
            head_common=b"".join(lines),
            upstream_host=host if core.preserve_host else None,
            chunked_request=self.chunked,
            has_body=has_body,
            keep_alive=parser.should_keep_alive() and not (self.upgrade_value and not upgrade),
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

    def _plan(self, snapshot: Snapshot, host: bytes, path: str) -> RoutePlan:
        hostname = host.split(b":", 1)[0].decode("latin-1").lower() if host else ""
        for route, plan in zip(snapshot.config.routes, snapshot.route_plans, strict=True):
            m = route.match
            if m.path_prefix is not None and not path.startswith(m.path_prefix):
                continue
            if m.host is not None:
                pattern = m.host.lower()
                if pattern.startswith("*."):
                    if not hostname.endswith(pattern[1:]):
                        continue
                elif hostname != pattern:
                    continue
            return plan
        return snapshot.default_plan

    def _request_info(self) -> RequestInfo | None:
        core = self.core
        affinity_region = None
        if core.affinity_cookie is not None and self.cookie is not None:
            affinity_region = _cookie_value(self.cookie, core.affinity_cookie)
        if affinity_region is None and self.affinity_value is None and self.geo_value is None:
            return None
        return RequestInfo(
            client_region=self.geo_value.decode("latin-1").strip().lower()
            if self.geo_value
            else None,
            affinity_region=affinity_region,
            affinity_key=self.affinity_value.decode("latin-1") if self.affinity_value else None,
        )

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


def _cookie_value(header: bytes, name: bytes) -> str | None:
    for part in header.split(b";"):
        k, sep, v = part.strip().partition(b"=")
        if sep and k == name:
            return v.decode("latin-1")
    return None
