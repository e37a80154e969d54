"""One HTTP/2 stream as an exchange's client side, and the exchange that answers over it.

``H2Exchange`` is an ``Exchange`` whose response head and router-made errors become
HEADERS/DATA frames; the body bytes and everything else (retries, hedging, accounting) are
the HTTP/1.1 path's. The request head becomes an exchange in ``h2request``; the router's
own answers are built by ``h2replies``.
"""

from __future__ import annotations

from time import monotonic
from typing import Protocol

from router.errors import ProxyError
from router.proxy.exchange import Exchange
from router.proxy.h2replies import error_body, error_fields, grpc_error_fields, is_grpc
from router.proxy.headers import TRAILER_DROP, connection_tokens, named_headers
from router.proxy.interfaces import ClientSide
from router.proxy.response import ResponseRelay
from router.proxy.upstream import UpstreamConnection

Header = tuple[bytes, bytes]


class H2Sender(Protocol):
    """What a stream needs of its connection (router.proxy.h2front.H2ClientConnection)."""

    peer: bytes
    proto: bytes
    writing_paused: bool
    last_active: float

    def cork(self) -> None: ...
    def uncork(self) -> None: ...
    def count_read(self) -> None: ...
    def send_headers(self, stream_id: int, fields: list[Header], end_stream: bool) -> None: ...
    def send_data(self, stream_id: int, chunks: list[bytes], end: bool) -> bool: ...
    def end_stream(self, stream_id: int, trailers: list[Header]) -> None: ...
    def reset_stream(self, stream_id: int, code: int) -> None: ...
    def acknowledge(self, stream_id: int, size: int) -> None: ...
    def stream_done(self, stream: H2Stream) -> None: ...


# RFC 9113 8.2.2: fields that are connection-specific in HTTP/1.1 make a request malformed.
CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
# Response fields that an HTTP/2 answer must not carry (framing is HTTP/2's own).
_RESPONSE_NEVER = CONNECTION_SPECIFIC | {b"te", b"trailer", b"proxy-authenticate"}


def _field(line: bytes) -> Header:
    """``b"Name: value\\r\\n"`` as an HTTP/2 field (lower-case name)."""
    name, _, value = line.partition(b":")
    return name.lower(), value.strip()


class H2Exchange(ResponseRelay):
    """An exchange whose client is an HTTP/2 stream: the head and errors are frames."""

    __slots__ = ("aborted", "stream")

    # Set by build_exchange right after construction (Exchange.__init__ takes the rest).
    stream: H2Stream
    aborted: bool

    def _send_response_head(self, status: int) -> None:
        core = self.core
        assert self.region is not None
        drop = core.response_drop
        fields: list[Header] = [(b":status", b"%d" % status)]
        tokens: frozenset[bytes] | None = None
        content_length: bytes | None = None
        for name, value in self.resp_headers:
            lname = name.lower()
            if lname in drop or lname in _RESPONSE_NEVER:
                if lname == b"content-length":
                    content_length = value
                elif lname == b"connection":
                    more = connection_tokens(value)
                    tokens = more if tokens is None else tokens | more
                continue
            fields.append((lname, value))
        named = named_headers(tokens)
        if named:
            fields = [f for f in fields if f[0] not in named]
        if content_length is not None:
            fields.append((b"content-length", content_length))
        if core.region_header:
            fields.append(_field(self.region.region_header_line))
        if core.request_id_header:
            fields.append((b"x-request-id", self.request_id))
        if self.set_cookie is not None:
            fields.append(_field(self.set_cookie))
        self.resp_started = True
        if self.is_head or status in (204, 304):
            length = 0
        elif content_length is not None and content_length.isdigit():
            length = int(content_length)
        else:
            length = -1
        self.stream.send_head(fields, length)
        if self.is_head:
            self.head_only_done = True

    def fail(self, error: ProxyError) -> None:
        if self.done:
            return
        if self.resp_started:
            super().fail(error)
            return
        self.close_client = not self.body_done
        self.stream.send_error(error, self.request_id, head_only=self.is_head)
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
        self.aborted = self.aborted or aborted
        super()._finish(status, aborted=aborted, close=close, router_error=router_error)


class H2Stream(ClientSide):
    """One client stream: the ``ClientSide`` of its exchange (router.proxy.interfaces)."""

    __slots__ = (
        "closed",
        "conn",
        "ended",
        "ex",
        "head",
        "outbuf",
        "paused",
        "remaining",
        "sent_end",
        "stop_body",
        "stream_id",
        "unacked",
    )

    def __init__(self, conn: H2Sender, stream_id: int) -> None:
        self.http11 = False
        self.conn = conn
        self.stream_id = stream_id
        self.peer = conn.peer
        self.last_active = monotonic()
        self.writing_paused = conn.writing_paused
        self.ex: H2Exchange | None = None
        self.head: list[Header] = []  # the request's fields (kept by reference, not copied)
        self.outbuf: list[bytes] = []  # response bytes waiting for flow-control window
        self.paused: set[str] = set()  # reasons the request body is not acknowledged
        self.unacked = 0  # request body bytes held back from the client's window
        self.ended = False  # the response's END_STREAM (or a reset) is queued or sent
        self.closed = False  # reset by either side: nothing more is written
        self.stop_body = False  # the request body is not wanted: RST_STREAM after the end
        self.remaining = -1  # response body bytes still to come when its length is known
        self.sent_end = False  # END_STREAM went with the head or the last DATA frame

    # -- ClientSide ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        self.last_active = monotonic()
        if self.remaining > 0:
            self.remaining -= len(data)
        self.outbuf.append(data)
        if len(self.outbuf) == 1:
            self.send_pending()

    def write_from(self, data: bytes, start: int) -> None:
        self.write(data[start:])

    def cork(self) -> None:
        self.conn.cork()

    def uncork(self) -> None:
        self.conn.uncork()

    def uncork_later(self) -> None:
        """Written at once (the connection batches its own frames); the region's read that
        wrote still counts toward the loop's pass (router.proxy.busypoll)."""
        self.conn.uncork()
        self.conn.count_read()

    def cork_upstream(self, conn: UpstreamConnection) -> None:
        return None  # request frames are written as they are decoded

    def pause_reading_for(self, reason: str) -> None:
        self.paused.add(reason)

    def resume_reading_for(self, reason: str) -> None:
        if reason in self.paused:
            self.paused.discard(reason)
            if not self.paused and self.unacked:
                unacked, self.unacked = self.unacked, 0
                self.conn.acknowledge(self.stream_id, unacked)

    def exchange_finished(self, ex: Exchange, close: bool) -> None:
        self.conn.last_active = monotonic()
        if self.closed:
            self.conn.stream_done(self)
            return
        if self.sent_end:
            self._done()
            return
        if self.ex is not None and self.ex.aborted:
            self.reset(0x2)  # INTERNAL_ERROR: the response was cut short
            return
        self.ended = True
        if not self.outbuf:
            self._end()

    def start_tunnel(
        self, conn: UpstreamConnection, upstream_rest: bytes, pending: list[bytes]
    ) -> None:
        raise RuntimeError("no WebSocket tunnel over an HTTP/2 stream")

    # -- frames ----------------------------------------------------------------------------

    def send_head(self, fields: list[Header], content_length: int) -> None:
        """The response head; ``content_length`` 0 ends the stream with it, -1: unknown."""
        if not self.closed:
            self.remaining = content_length
            self.sent_end = content_length == 0
            self.conn.send_headers(self.stream_id, fields, end_stream=self.sent_end)

    def send_error(self, error: ProxyError, request_id: bytes | None, *, head_only: bool) -> None:
        if self.closed:
            return
        if is_grpc(self.head):
            # A gRPC client reads status from grpc-status, not from a JSON body: answer
            # trailers-only, as Envoy's local replies do (the HTTP status maps as it does).
            self.send_head(grpc_error_fields(error, request_id), 0)
            return
        body = error_body(error)
        fields = error_fields(error, request_id, len(body))
        self.send_head(fields, 0 if head_only else len(body))
        if not head_only:
            self.write(body)

    def refuse(self, error: ProxyError, request_id: bytes | None, body_ended: bool) -> None:
        """Answer a request refused before it had an exchange (a router-made error)."""
        self.send_error(error, request_id, head_only=False)
        self.ended = True
        self.stop_body = not body_ended
        if not self.outbuf:
            self._end()

    def send_pending(self) -> None:
        """Send what the stream's flow-control window allows; pause the region when full."""
        if self.closed:
            return
        if self.conn.send_data(self.stream_id, self.outbuf, self.remaining == 0):
            self.sent_end = True  # the body's last bytes carried END_STREAM
        self.set_blocked(bool(self.outbuf) or self.conn.writing_paused)
        if not self.outbuf and self.ended:
            self._end()

    def set_blocked(self, blocked: bool) -> None:
        """Stop (or restart) reading the region's response while the client cannot take it."""
        if blocked == self.writing_paused:
            return
        self.writing_paused = blocked
        ex = self.ex
        conn = ex.upstream if ex is not None else None
        if conn is not None and conn.transport is not None:
            if blocked:
                conn.transport.pause_reading()
            else:
                conn.transport.resume_reading()

    def _end(self) -> None:
        ex = self.ex
        if not self.sent_end:
            trailers = ex.resp_trailers if ex is not None else []
            self.conn.end_stream(self.stream_id, [_field(t) for t in trailers])
        self._done()

    def _done(self) -> None:
        ex = self.ex
        self.closed = True
        if self.stop_body or (ex is not None and ex.close_client and not ex.body_done):
            self.conn.reset_stream(self.stream_id, 0x0)  # NO_ERROR: stop sending the body
        self.conn.stream_done(self)

    def reset(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            self.outbuf.clear()
            self.conn.reset_stream(self.stream_id, code)
        self.conn.stream_done(self)

    # -- from the connection ---------------------------------------------------------------

    def on_data(self, data: bytes, flow_len: int) -> None:
        self.last_active = monotonic()
        ex = self.ex
        if data and ex is not None and not ex.done:  # (an empty chunk would end a chunked body)
            try:
                ex.feed_body(data)
            except ProxyError as error:
                ex.fail(error)
        if self.paused:
            self.unacked += flow_len
        elif flow_len:
            self.conn.acknowledge(self.stream_id, flow_len)

    def on_trailers(self, fields: list[Header]) -> None:
        ex = self.ex
        if ex is not None and ex.chunked_request:
            for name, value in fields:
                if name not in TRAILER_DROP and name[:1] != b":":
                    ex.req_trailers.append(b"%b: %b\r\n" % (name, value))

    def on_end(self) -> None:
        """The client's END_STREAM (jh2 reports it once, as its own event)."""
        ex = self.ex
        if ex is None or ex.body_done:
            return  # no body (the exchange knew from the head), or already complete
        if not ex.done:
            ex.body_complete()
        else:
            ex.body_done = True

    def on_reset(self) -> None:
        """The client reset the stream: cancel this request only."""
        self.closed = True
        self.outbuf.clear()
        ex = self.ex
        if ex is not None and not ex.done:
            ex.client_lost()
        self.conn.stream_done(self)

    def __repr__(self) -> str:
        return f"<H2Stream {self.stream_id} ex={self.ex!r}>"
