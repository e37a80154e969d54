"""The response half of an exchange: what a region answers, relayed to the client.

A ``ResponseRelay`` is the ``Exchange`` (router/proxy/exchange.py: region choice, tries,
request body, the end) that client connections create: the upstream connection delivers
the region's response head, body, trailers and end to it, and it re-frames the head for the
client (hop-by-hop and ``Connection``-named fields dropped, the router's own fields added,
chunked or close-delimited where the region's framing does not carry over), relays the
body, takes a retryable status as a failed try, and ends the try when the response does.
It also writes what the router answers itself (``fail``: the JSON error response).
HTTP/2 clients get ``router.proxy.h2stream.H2Exchange``, which writes both as frames.
"""

from __future__ import annotations

from time import monotonic

from router.errors import ProxyError
from router.proxy.exchange import CHUNK_END, Exchange, last_chunk
from router.proxy.headers import (
    CRLF,
    TRAILER_DROP,
    connection_tokens,
    error_response,
    named_headers,
    status_bytes,
)
from router.proxy.retry_policy import retry_after_seconds
from router.proxy.upstream import UpstreamConnection
from router.routing.load import RegionLoad


class ResponseRelay(Exchange):
    """An exchange that relays its region's response (HTTP/1.1 framing to the client)."""

    __slots__ = ()

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
        drop_lengths = core.response_drop_lengths
        lines = [b"HTTP/1.1 %b %b\r\n" % (status_bytes(status), self.resp_reason)]
        content_length: bytes | None = None
        upstream_chunked = False
        tokens: frozenset[bytes] | None = None
        for name, value in self.resp_headers:
            if len(name) in drop_lengths:
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
        if tokens is not None:
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
            if not upstream_chunked:  # llhttp checked the value: digits only
                self.relay_length = int(content_length)
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

    def on_response_raw(self, data: bytes, start: int) -> None:
        """Content-Length body bytes as read (``data[start:]``): the framing carries over."""
        if start:
            self.client.write_from(data, start)
        else:
            self.client.write(data)

    def on_response_trailer(self, name: bytes, value: bytes) -> None:
        """A trailer field of a chunked response: passed on when the client gets chunks."""
        if name.lower() not in TRAILER_DROP:
            self.resp_trailers.append(b"%b: %b\r\n" % (name, value))

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
            self.client.write(last_chunk(self.resp_trailers))
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
                    self.client.write(CHUNK_END)
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
