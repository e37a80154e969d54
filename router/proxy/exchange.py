"""One proxied request: region choice, attempts and retries, response relay, accounting.

The client connection creates an ``Exchange`` when a request head has been read and
validated; the exchange binds to a pooled upstream connection (or opens one), writes the
re-framed request, relays the re-framed response, and tells the client connection when it
is done. All of it runs in protocol callbacks; only opening a connection is a task. What
to do when an attempt fails (retry where and when, or answer an error) is router/proxy/retries.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from time import monotonic

from router.errors import BodyTooLarge, NoEligibleRegion, ProxyError
from router.proxy.headers import (
    CRLF,
    TRAILER_DROP,
    connection_tokens,
    error_response,
    named_headers,
)
from router.proxy.interfaces import ClientSide
from router.proxy.retry_policy import retry_after_seconds
from router.proxy.services import ExchangeServices, HedgeSet
from router.proxy.upstream import ResponseSink, UpstreamConnection
from router.routing.load import RegionLoad
from router.routing.routes import current_plan
from router.routing.strategies import RequestInfo
from router.state.snapshot import RegionView, RoutePlan, Snapshot

_CHUNK_END = b"0\r\n\r\n"
_PENDING_PAUSE_BYTES = 256 * 1024


class Exchange(ResponseSink):
    __slots__ = (
        "_connect_task",
        "_informational",
        "attempts",
        "body_bytes",
        "body_done",
        "body_too_large_for_retry",
        "chunked_request",
        "close_client",
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
        self._connect_task: asyncio.Task[None] | None = None
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
            self._connect_task = core.loop.create_task(self._connect(region))

    async def _connect(self, region: RegionView) -> None:
        try:
            conn = await self.core.open_connection(region)
        except TimeoutError:
            self._connect_task = None
            if not self.done:
                self.core.attempt_failed(self, "connect-timeout", sent=False)
            return
        except OSError:
            self._connect_task = None
            if not self.done:
                self.core.attempt_failed(self, "connect-failure", sent=False)
            return
        self._connect_task = None
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
                parts.append(self._last_chunk(self.req_trailers))
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
                self.upstream.write(self._last_chunk(self.req_trailers))
            if not self.resp_started:
                self._await_headers()

    def tunnel_data(self, data: bytes) -> None:
        """Client bytes after a WebSocket handshake, before the upstream accepted it."""
        self.tunnel_pending.append(data)

    # -- response (from the upstream connection) ---------------------------------------

    def on_response_head(self, status: int) -> None:
        if 100 <= status < 200:
            if status != 101:
                self._informational = True  # 100/103: dropped; the final response follows
                self.resp_headers = []
                return
            if not self.upgrade:
                detail = "unrequested 101 from region"
                self.core.attempt_failed(self, "protocol", sent=True, detail=detail)
                return
        core = self.core
        core.awaiting.discard(self)
        self.resp_trailers = []  # a discarded attempt's must not reach the client
        region = self.region
        assert region is not None
        now = monotonic()
        # This attempt's time to headers (from when it was written), not the whole
        # exchange's: a retry must not charge the earlier attempts to this region.
        elapsed = now - self.sent_at
        load = self.load
        assert load is not None
        self.status = status
        if status >= 500:
            load.observe_failure(now)
            core.observer(region.id, False, str(status))
            if status in {503, 429}:
                self._honour_retry_after(load, now)
            if core.retry.retries_status(status) and core.may_retry(self, str(status)):
                self.discard_response = True
                self.head_only_done = self.is_head  # no body will follow a HEAD answer
                return
        else:
            if status == 429:
                self._honour_retry_after(load, now)
            load.observe(elapsed, now)
            if core.hedge_auto:
                load.record_time(elapsed, now)
            core.observer(region.id, True, "")
        if self.hedges is not None:
            self.hedges.end_all("lost")  # this response goes to the client: every copy lost
        self._send_response_head(status)

    def _honour_retry_after(self, load: RegionLoad, now: float) -> None:
        """A 429 or 503 with Retry-After: the region gets no request before then."""
        for name, value in self.resp_headers:
            if name.lower() == b"retry-after":
                seconds = retry_after_seconds(value)
                if seconds is not None:
                    load.not_before = now + min(seconds, 3600.0)
                return

    def _send_response_head(self, status: int) -> None:
        core = self.core
        client = self.client
        assert self.region is not None
        drop = core.response_drop
        lines = [b"HTTP/1.1 %d %b\r\n" % (status, self.resp_reason)]
        content_length: bytes | None = None
        upstream_chunked = False
        tokens: frozenset[bytes] | None = None
        for name, value in self.resp_headers:
            lname = name.lower()
            if lname in drop:
                if lname == b"content-length":
                    content_length = value
                elif lname == b"transfer-encoding":
                    upstream_chunked = True
                elif lname == b"connection":
                    more = connection_tokens(value)
                    tokens = more if tokens is None else tokens | more
                continue
            lines.append(b"%b: %b\r\n" % (name, value))
        named = named_headers(tokens)
        if named:
            lines = [lines[0]] + [
                ln for ln in lines[1:] if ln.split(b":", 1)[0].lower() not in named
            ]
        if status == 101:
            lines.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
        elif self.is_head or status in (204, 304):
            if content_length is not None:
                lines.append(b"Content-Length: %b\r\n" % content_length)
        elif content_length is not None:
            lines.append(b"Content-Length: %b\r\n" % content_length)
        else:
            self.resp_until_close = not upstream_chunked
            if client.http11:
                self.resp_chunked = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.close_client = True
        if core.region_header:
            lines.append(self.region.region_header_line)
        if core.request_id_header:
            lines.append(b"X-Request-ID: %b\r\n" % self.request_id)
        if self.set_cookie is not None:
            lines.append(self.set_cookie)
        if status == 101:
            pass
        elif self.close_client or core.draining:
            self.close_client = True
            lines.append(b"Connection: close\r\n")
        elif not client.http11:
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(CRLF)
        self.resp_started = True
        client.write(b"".join(lines))
        if self.is_head:
            self.head_only_done = True  # HEAD: the parser would wait for a body that never comes

    def on_response_body(self, data: bytes) -> None:
        if self.discard_response or self.head_only_done:
            return  # a retried 5xx, or bytes a confused upstream sent after a HEAD answer
        if self.resp_chunked:
            self.client.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.client.write(data)

    def on_response_trailer(self, name: bytes, value: bytes) -> None:
        """A trailer field of a chunked response: passed on when the client gets chunks."""
        if name.lower() not in TRAILER_DROP:
            self.resp_trailers.append(b"%b: %b\r\n" % (name, value))

    @staticmethod
    def _last_chunk(trailers: list[bytes]) -> bytes:
        return b"0\r\n%b\r\n" % b"".join(trailers) if trailers else _CHUNK_END

    def on_response_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.status == 101:
            return  # llhttp ends the 101 message, then stops: on_upgrade_data follows
        conn = self.upstream
        if self.discard_response:
            self.core.retry_after_status(self, conn)
            return
        if self.done:
            return
        if self.resp_chunked:
            self.client.write(self._last_chunk(self.resp_trailers))
        reusable = (
            conn is not None
            and self.body_done
            and not self.head_only_done
            and conn.parser.should_keep_alive()
        )
        if self.head_only_done and conn is not None:
            conn.reset_parser()
            reusable = self.body_done
        self.release_upstream(reuse=reusable)
        if not self.body_done:
            self.close_client = True  # the client is still sending a body nobody reads
        self._finish(self.status)

    def on_upgrade_data(self, rest: bytes) -> None:
        """The upstream accepted a WebSocket: splice the two connections together."""
        conn = self.upstream
        if conn is None or self.done:
            return  # an unrequested 101, already failed
        self.core.awaiting.discard(self)
        self.release_upstream(reuse=False, keep_open=True)
        self.client.start_tunnel(conn, rest, self.tunnel_pending)
        self.tunnel_pending = []
        self._finish(101, close=False)

    def on_upstream_protocol_error(self, message: str) -> None:
        self.core.attempt_failed(self, "protocol", sent=True, detail=message)

    def on_upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        if self.done or conn is not self.upstream:
            return
        if self.resp_started:
            if self.resp_until_close and not self.discard_response:
                self.upstream = None
                self.release_upstream(reuse=False)
                if self.resp_chunked:
                    self.client.write(_CHUNK_END)
                self._finish(self.status)  # end of a close-delimited body
                return
            # Truncated mid-body: the only honest signal left is to cut the client off.
            self.release_upstream(reuse=False)
            self.close_client = True
            self._finish(self.status, aborted=True)
            return
        if self.discard_response:
            self.core.retry_after_status(self, None)
            return
        stale = conn.reused and self.status == 0
        self.core.attempt_failed(self, "reset", sent=True, stale=stale)

    def on_timeout(self) -> None:
        """The response-headers deadline passed (the core's sweeper calls this)."""
        if not self.done and not self.resp_started:
            # With per_try on, this deadline is the whole request's: nothing follows it.
            self.core.attempt_failed(self, "timeout", sent=True, final=bool(self.core.per_try_s))

    # -- failures and retries (policy in router/proxy/retries.py) ----------------------------

    def body_done_empty(self) -> bool:
        return self.body_done and self.body_bytes == 0

    def retry_now(self) -> None:
        """A scheduled retry's time has come (the loop calls this).

        It chooses from the routing state of now, not of when the request arrived: a
        region ejected or failed over in between must not get the retry.
        """
        if self.done or self.upstream is not None or self._connect_task is not None:
            return  # finished, or already on another try (a hedge took it over, a rescue)
        current = self.core.holder.current
        if current is not self.snapshot:
            self.plan = current_plan(self.snapshot, current, self.plan)
            self.snapshot = current
        self.start()

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
        if self.done:
            return
        if self.resp_started:
            self.close_client = True
            self._finish(self.status, aborted=True)
            return
        self.close_client = self.close_client or not self.body_done
        self.client.write(
            error_response(error, self.request_id, close=self.close_client)
            if not self.is_head
            else error_response(error, self.request_id, close=self.close_client, head_only=True)
        )
        self.status = error.status
        self._finish(error.status, router_error=error.code)

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
        if self.hedges is not None:
            self.hedges.end_all("cancelled")
        if self.retrying:
            core.retries_active -= 1
            self.retrying = False
        now = monotonic()
        region_id = self.region.id if self.region is not None else "none"
        core.stats.record(region_id, self.method_label, str(status), now - self.started_at)
        if core.access_log is not None:
            core.access_log(self, status, now - self.started_at, aborted, router_error)
        self.client.exchange_finished(self, self.close_client if close is None else close)

    def cancel_connect(self) -> None:
        if self._connect_task is not None:
            self._connect_task.cancel()
            self._connect_task = None

    def client_lost(self) -> None:
        """The client went away: cancel the upstream request (its connection is not reused)."""
        if self.done:
            return
        self.close_client = True
        self.resp_started = True  # nothing more can be written
        if self.upstream is not None:
            self.release_upstream(reuse=False)
        self._finish(self.status or 499, aborted=True)


def raise_body_too_large(limit: int) -> None:
    raise BodyTooLarge(f"request body exceeds {limit} bytes")


def no_region_error(snapshot: Snapshot, now: float) -> NoEligibleRegion:
    wake = snapshot.next_eligible_at
    hint = snapshot.config.health_check.interval_s
    seconds = int(max(1.0, (wake - now) if wake else hint) + 0.999)
    return NoEligibleRegion("no eligible region for this request", retry_after_s=seconds)
