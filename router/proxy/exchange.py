"""One proxied request's state and its request half: region choice, tries, body, the end.

The client connection creates an exchange when a request head has been read and validated;
the exchange chooses a region, binds to a pooled upstream connection (or opens one), writes
the re-framed request and its body, and tells the client connection when it is done,
counting the outcome. All of it runs in protocol callbacks; only opening a connection is a
task. Everything that reaches the client (the response, an error the router answers) is
the response half, ``router.proxy.response.ResponseRelay``, the class client connections
create. What to do when a try fails (retry where and when, hedge, or answer an error) is
router/proxy/retries.py and hedging.py, above this module: the exchange asks through its
services' hooks (router/proxy/services.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from time import monotonic

from router.errors import BodyTooLarge, NoEligibleRegion, ProxyError
from router.proxy.headers import CRLF, status_label
from router.proxy.interfaces import ClientSide
from router.proxy.services import ExchangeServices, HedgeSet
from router.proxy.upstream import ResponseSink, UpstreamConnection
from router.routing.load import RegionLoad
from router.routing.strategies import RequestInfo
from router.state.snapshot import RegionView, RoutePlan, Snapshot

CHUNK_END = b"0\r\n\r\n"
_PENDING_PAUSE_BYTES = 256 * 1024


class Exchange(ResponseSink):
    __slots__ = (
        "_informational",
        "attempts",
        "body_bytes",
        "body_done",
        "body_too_large_for_retry",
        "chunked_request",
        "close_client",
        "connect_task",
        "core",
        "counted",
        "deadline",
        "discard_response",
        "done",
        "head_common",
        "hedges",
        "idempotent",
        "info",
        "is_head",
        "keep_alive",
        "load",
        "method",
        "method_label",
        "pending",
        "pending_bytes",
        "plan",
        "region",
        "req_trailers",
        "request_id",
        "request_line",
        "resp_chunked",
        "resp_started",
        "resp_trailers",
        "resp_until_close",
        "retry_buffer",
        "retrying",
        "sent_at",
        "set_cookie",
        "snapshot",
        "started_at",
        "status",
        "tried",
        "try_timer",
        "tunnel_pending",
        "upgrade",
        "upstream",
        "upstream_host",
    )

    def __init__(
        self,
        core: ExchangeServices[Exchange],
        client: ClientSide,
        *,
        method: bytes,
        method_label: str,
        request_line: bytes,
        head_common: bytes,
        upstream_host: bytes | None,
        chunked_request: bool,
        has_body: bool,
        keep_alive: bool,
        upgrade: bool,
        idempotent: bool,
        request_id: bytes,
        snapshot: Snapshot,
        plan: RoutePlan,
        info: RequestInfo | None,
        now: float,
    ) -> None:
        # Long on purpose: every field of an exchange is set here, once, so that compiled
        # (mypyc) each is a native slot with a known type, and no attribute is ever
        # missing on the per-request path. The arguments are the request's, already parsed.
        self.core = core
        self.client = client
        self.method = method
        self.method_label = method_label
        self.is_head = method == b"HEAD"
        self.request_line = request_line
        self.head_common = head_common
        self.upstream_host = upstream_host  # None: the region endpoint's host
        self.chunked_request = chunked_request
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.idempotent = idempotent
        self.request_id = request_id
        self.snapshot = snapshot
        self.plan = plan
        self.info = info
        self.started_at = now
        self.body_done = not has_body
        self.body_bytes = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.retry_buffer: list[bytes] | None = [] if idempotent and has_body else None
        self.body_too_large_for_retry = False
        self.region: RegionView | None = None
        self.load: RegionLoad | None = None  # the region's live load, looked up once
        self.upstream: UpstreamConnection | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.tried: set[str] = set()
        self.counted = False
        self.attempts = 0
        self.retrying = False
        self.deadline = 0.0  # response headers due (0: not waiting yet)
        self.sent_at = 0.0  # this try's clock start: its latency sample is measured from here
        self.status = 0
        self.resp_reason = b""
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.resp_trailers: list[bytes] = []  # of a chunked response, as "name: value" lines
        self.req_trailers: list[bytes] = []  # of a chunked request body, the same
        self.resp_started = False
        self.resp_chunked = False
        self.resp_until_close = False  # the upstream's body ends when it closes
        self.head_only_done = False
        self.relay_length = 0
        self.discard_response = False
        self._informational = False
        # A refused upgrade leaves the client's parser in upgrade mode: close after it.
        self.close_client = not keep_alive or upgrade
        self.done = False
        self.set_cookie: bytes | None = None
        self.tunnel_pending: list[bytes] = []
        # tail-latency state (router/proxy/hedging.py), only when per_try or hedging is on
        self.try_timer: asyncio.TimerHandle | None = None
        self.hedges: HedgeSet | None = None

    def __repr__(self) -> str:
        region = self.region.id if self.region else None
        return f"<Exchange {self.method.decode()} region={region} attempts={self.attempts}>"

    # -- attempts ----------------------------------------------------------------------

    def start(self) -> None:
        core = self.core
        now = monotonic()
        region = core.selector.choose(self.snapshot, self.plan, self.info, now, self.tried)
        if region is None and self.tried:
            # Every eligible region has failed this request once: try one again rather
            # than answer 503 for a request the regions did see.
            region = core.selector.choose(self.snapshot, self.plan, self.info, now)
        if region is None:
            self.fail(no_region_error(self.snapshot, now))
            return
        self.region = region
        self.attempts += 1
        load = self.load = core.loads.get(region.id)
        load.inflight += 1
        core.inflight += 1
        self.counted = True
        if self.core.affinity_cookie is not None and (
            self.info is None or self.info.affinity_region != region.id
        ):
            self.set_cookie = core.affinity_cookie_header(region.id)
        conn = core.pool.acquire_idle(region.endpoint)
        if conn is not None:
            self._bind(conn)
        else:
            self.connect_task = core.loop.create_task(self._connect(region))

    async def _connect(self, region: RegionView) -> None:
        try:
            conn = await self.core.open_connection(region)
        except TimeoutError:
            self.connect_task = None
            if not self.done:
                self.core.attempt_failed(self, "connect-timeout", sent=False)
            return
        except OSError:
            self.connect_task = None
            if not self.done:
                self.core.attempt_failed(self, "connect-failure", sent=False)
            return
        self.connect_task = None
        if self.done:
            self.core.pool.release(conn, monotonic())
            return
        if not conn.usable():
            # Accepted, then reset before we wrote a byte: nothing was sent, so this is
            # retried like a refused connection.
            conn.abort()
            self.core.attempt_failed(self, "connect-failure", sent=False)
            return
        self._bind(conn)

    def _bind(self, conn: UpstreamConnection) -> None:
        assert self.region is not None
        self.upstream = conn
        conn.exchange = self
        client = self.client
        if client.writing_paused and conn.transport is not None:
            conn.transport.pause_reading()  # the client is not taking response bytes yet
        client.cork_upstream(conn)
        parts = self.head_parts(self.region)
        pending = self.pending
        if pending:
            self.pending = []
            self.pending_bytes = 0
            self.client.resume_reading_for("buffer")
        self.add_body(parts, pending, complete=self.body_done)
        conn.write(b"".join(parts))
        if self.body_done:
            self._await_headers()
        else:
            # the response-headers clock starts when the body is complete: an upload may
            # take longer than timeouts.response_headers (idle covers one that stalls)
            self.sent_at = monotonic()

    def head_parts(self, region: RegionView) -> list[bytes]:
        """The request head as written to ``region`` (a list the caller may extend)."""
        endpoint = region.endpoint
        host = self.upstream_host or endpoint.host_header_bytes
        line = self.request_line
        if endpoint.base_path_bytes:  # "GET /x HTTP/1.1" -> "GET /prefix/x HTTP/1.1"
            cut = len(self.method) + 1
            line = line[:cut] + endpoint.base_path_bytes + line[cut:]
        return [line, b"Host: ", host, CRLF, self.head_common]

    def rewind(self) -> None:
        """Before another try: forget the failed try's response; the body goes again from
        the retry buffer (a try that started streaming an unbuffered body is never retried)."""
        self.status = 0
        self.resp_headers = []
        self.resp_reason = b""
        if self.retry_buffer:
            self.pending = list(self.retry_buffer)
            self.pending_bytes = sum(len(c) for c in self.pending)

    def add_body(self, parts: list[bytes], chunks: Sequence[bytes], *, complete: bool) -> None:
        """Append body chunks to ``parts`` in the request's framing; ``complete``: the body
        ends here, so a chunked one gets its last chunk (with the client's trailers)."""
        if self.chunked_request:
            for chunk in chunks:
                parts += (b"%x\r\n" % len(chunk), chunk, CRLF)
            if complete:
                parts.append(last_chunk(self.req_trailers))
        else:
            parts += chunks

    def _await_headers(self) -> None:
        core = self.core
        now = monotonic()
        self.sent_at = now
        if not (core.per_try_s and self.deadline):
            # With per_try, response_headers bounds the whole request (Envoy's route
            # timeout); without, each try (a timed-out try may be retried).
            self.deadline = now + core.response_headers_timeout_s
        core.awaiting.add(self)
        if core.tail_timers:
            core.arm_tail(self, now)

    # -- request body (from the client connection) -------------------------------------

    def feed_body(self, data: bytes) -> None:
        self.body_bytes += len(data)
        if self.body_bytes > self.core.max_body_bytes:
            raise_body_too_large(self.core.max_body_bytes)
        buf = self.retry_buffer
        if buf is not None:
            if self.core.retry.keeps_body(self.body_bytes):
                buf.append(data)
            else:
                self.retry_buffer = None
                self.body_too_large_for_retry = True
        conn = self.upstream
        if conn is not None and not self.discard_response:
            if self.chunked_request:
                conn.write(b"%x\r\n%b\r\n" % (len(data), data))
            else:
                conn.write(data)
        else:
            self.pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes > _PENDING_PAUSE_BYTES:
                self.client.pause_reading_for("buffer")

    def body_complete(self) -> None:
        self.body_done = True
        if self.upstream is not None and not self.discard_response:
            if self.chunked_request:
                self.upstream.write(last_chunk(self.req_trailers))
            if not self.resp_started:
                self._await_headers()

    def tunnel_data(self, data: bytes) -> None:
        """Client bytes after a WebSocket handshake, before the upstream accepted it."""
        self.tunnel_pending.append(data)

    def on_timeout(self) -> None:
        """The response-headers deadline passed (the core's sweeper calls this)."""
        raise NotImplementedError  # router/proxy/response.py: what reaches the client

    # -- failures and retries (policy in router/proxy/retries.py) ----------------------------

    def body_done_empty(self) -> bool:
        return self.body_done and self.body_bytes == 0

    def release_upstream(self, *, reuse: bool, keep_open: bool = False) -> None:
        if self.try_timer is not None:
            self.try_timer.cancel()
            self.try_timer = None
        if self.hedges is not None:
            self.hedges.disarm()
        if self.counted:
            self.counted = False
            assert self.load is not None
            self.load.inflight -= 1
            self.core.inflight -= 1
        conn = self.upstream
        self.upstream = None
        if conn is None:
            return
        conn.exchange = None
        if keep_open:
            return
        if reuse:
            self.core.pool.release(conn, monotonic())
        else:
            conn.abort()

    def fail(self, error: ProxyError) -> None:
        """Answer ``error`` to the client (or cut it off if the response has started)."""
        raise NotImplementedError  # router/proxy/response.py: what reaches the client

    def _finish(
        self,
        status: int,
        *,
        aborted: bool = False,
        close: bool | None = None,
        router_error: str | None = None,
    ) -> None:
        if self.done:
            return
        self.release_upstream(reuse=False)
        self.done = True
        core = self.core
        core.awaiting.discard(self)
        self.cancel_connect()
        hedges = self.hedges
        if hedges is not None:
            self.hedges = None  # it points back at this exchange: no cycle left for the GC
            hedges.end_all("cancelled")
        if self.retrying:
            core.retries_active -= 1
            self.retrying = False
        now = monotonic()
        region_id = self.region.id if self.region is not None else "none"
        core.stats.record(region_id, self.method_label, status_label(status), now - self.started_at)
        if core.access_log is not None:
            core.access_log(self, status, now - self.started_at, aborted, router_error)
        self.client.exchange_finished(self, self.close_client if close is None else close)

    def cancel_connect(self) -> None:
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None

    def client_lost(self) -> None:
        """The client went away: cancel the upstream request (its connection is not reused)."""
        if self.done:
            return
        self.close_client = True
        self.resp_started = True  # nothing more can be written
        if self.upstream is not None:
            self.release_upstream(reuse=False)
        self._finish(self.status or 499, aborted=True)


def last_chunk(trailers: list[bytes]) -> bytes:
    """The end of a chunked body, with its trailer fields (``name: value\\r\\n`` lines)."""
    return b"0\r\n%b\r\n" % b"".join(trailers) if trailers else CHUNK_END


def raise_body_too_large(limit: int) -> None:
    raise BodyTooLarge(f"request body exceeds {limit} bytes")


def no_region_error(snapshot: Snapshot, now: float) -> NoEligibleRegion:
    wake = snapshot.next_eligible_at
    hint = snapshot.config.health_check.interval_s
    seconds = int(max(1.0, (wake - now) if wake else hint) + 0.999)
    return NoEligibleRegion("no eligible region for this request", retry_after_s=seconds)
