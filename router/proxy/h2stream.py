"""One HTTP/2 stream as an exchange's client side, and the exchange that answers over it.

A stream's request head (pseudo-headers and fields, already HPACK-decoded) is checked the
RFC 9113 way (8.2 and 8.3: lower-case names, no connection-specific fields, ``te`` only
``trailers``, pseudo-headers first and known, ``:method``/``:scheme``/``:path`` present,
no CR/LF/NUL) and turned into the HTTP/1.1 request line and head the regions get, with the
same routing, forwarding headers and refusals as ``ClientConnection``. ``H2Exchange`` is an
``Exchange`` whose response head and router-made errors become HEADERS/DATA frames; the
body bytes and everything else (retries, hedging, accounting) are the HTTP/1.1 path's.
"""

from __future__ import annotations

import re
from time import monotonic
from typing import TYPE_CHECKING, Protocol

import orjson

from router.errors import BadRequest, BodyTooLarge, ProxyError, RouterError
from router.proxy.exchange import Exchange
from router.proxy.headers import (
    FRAMING_LOOKALIKES,
    IDEMPOTENT_METHODS,
    TRAILER_DROP,
    connection_tokens,
    forwarded_fields,
    framing_field,
    named_headers,
    valid_host,
)
from router.proxy.paths import normalize_path
from router.proxy.response import ResponseRelay
from router.proxy.upstream import UpstreamConnection

if TYPE_CHECKING:
    from router.proxy.core import ProxyCore

Header = tuple[bytes, bytes]


class H2Sender(Protocol):
    """What a stream needs of its connection (router.proxy.h2front.H2ClientConnection)."""

    peer: bytes
    proto: bytes
    writing_paused: bool
    last_active: float

    def cork(self) -> None: ...
    def uncork(self) -> None: ...
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
_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
# Names joined by "\n": a character outside the lower-case token set, or a ":" anywhere
# but at a name's start (pseudo-headers are checked against _PSEUDO on their own).
_BAD_NAMES = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z\n:]|[^\n]:|^$|\n\n|\n$")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")
# Response fields that an HTTP/2 answer must not carry (framing is HTTP/2's own).
_RESPONSE_NEVER = CONNECTION_SPECIFIC | {b"te", b"trailer", b"proxy-authenticate"}


class StreamError(RouterError):
    """A malformed request: the stream is reset with PROTOCOL_ERROR, nothing is forwarded."""


def build_exchange(
    core: ProxyCore, stream: H2Stream, headers: list[Header], end_stream: bool
) -> H2Exchange:
    """The exchange for a request head; raises ``StreamError`` or a ``ProxyError``."""
    method = scheme = path = authority = None
    seen_regular = False
    lines: list[bytes] = []
    host_field: bytes | None = None
    content_length = -1
    cookies: list[bytes] = []
    xff: bytes | None = None
    request_id: bytes | None = None
    idempotency_key = False
    affinity_value: bytes | None = None
    geo_value: bytes | None = None
    size = 0
    interesting = core.interesting
    for name, value in headers:
        size += len(name) + len(value) + 32
        if name[:1] == b":":
            if seen_regular:
                raise StreamError("pseudo-header after a regular field")
            if name not in _PSEUDO:
                raise StreamError(f"unknown pseudo-header {name!r}")
            if name == b":method":
                if method is not None:
                    raise StreamError("duplicate :method")
                method = value
            elif name == b":path":
                if path is not None:
                    raise StreamError("duplicate :path")
                path = value
            elif name == b":scheme":
                if scheme is not None:
                    raise StreamError("duplicate :scheme")
                scheme = value
            else:
                if authority is not None:
                    raise StreamError("duplicate :authority")
                authority = value
            continue
        seen_regular = True
        if name not in interesting:
            lines.append(b"%b: %b\r\n" % (name, value))
            continue
        if name in core.watched:
            if name == b"cookie":
                cookies.append(value)  # crumbs are joined into one field (RFC 9113 8.2.3)
                continue
            if name == b"idempotency-key":
                idempotency_key = True
            elif name == core.affinity_header:
                affinity_value = value
            if name == core.geo_header:
                geo_value = value
            lines.append(b"%b: %b\r\n" % (name, value))
        elif name in CONNECTION_SPECIFIC:
            raise StreamError(f"connection-specific field {name!r}")
        elif name == b"te":
            if value != b"trailers":
                raise StreamError("te other than trailers")
            lines.append(b"te: trailers\r\n")
        elif name == b"host":
            host_field = value
        elif name == b"content-length":
            if not value.isdigit():
                raise StreamError("invalid content-length")
            content_length = int(value)
        elif name == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
        elif name == b"x-request-id":
            if 0 < len(value) <= 200:
                request_id = value
        elif name in FRAMING_LOOKALIKES:
            raise BadRequest(f"header {name.decode('latin-1')!r} could be read as a framing header")
        # everything else in REQUEST_SPECIAL is hop-by-hop or rewritten: dropped
    if size > core.max_header_bytes:
        raise StreamError("header list too large")
    # One scan of all names and one of all values rather than two per field.
    if _BAD_NAMES.search(b"\n".join([name for name, _ in headers])) is not None:
        raise StreamError("invalid field name (upper case, or not a token)")
    if _BAD_VALUE.search(b"".join([value for _, value in headers])) is not None:
        raise StreamError("CR, LF or NUL in a field value")
    if method is None:
        raise StreamError("missing :method")
    if method == b"CONNECT":
        raise BadRequest("CONNECT is not supported: this is a reverse proxy")
    if path is None or scheme is None or not path:
        raise StreamError("missing :path or :scheme")
    if cookies:
        lines.append(b"cookie: %b\r\n" % b"; ".join(cookies))
    host = authority if authority is not None else host_field
    if host is None or not valid_host(host):
        raise BadRequest("missing or invalid :authority")
    if path[:1] != b"/" and path != b"*":
        raise BadRequest("request target must be origin-form")
    snapshot = core.holder.current
    norm = (
        normalize_path(path) if (b"." in path or b"%" in path or core.has_routes) else ""
    )  # also rejects climbing above the root
    plan = core.plan_for(snapshot, host, norm) if core.has_routes else snapshot.default_plan
    if content_length > core.max_body_bytes:
        raise BodyTooLarge(f"request body exceeds {core.max_body_bytes} bytes")
    has_body = not end_stream and content_length != 0
    chunked = has_body and content_length < 0
    request_id = request_id or core.next_request_id()
    peer = stream.peer
    forwarded_for = peer if xff is None else xff + b", " + peer
    lines.append(forwarded_fields(forwarded_for, stream.conn.proto, host, request_id))
    framing = framing_field(chunked, content_length)
    if not framing and method in (b"POST", b"PUT", b"PATCH"):
        framing = b"Content-Length: 0\r\n"  # HTTP/1.1 servers expect a length on these
    lines.append(framing)
    lines.append(b"\r\n")
    ex = H2Exchange(
        core,
        stream,
        method=method,
        method_label=core.method_label(method),
        request_line=b"%b %b HTTP/1.1\r\n" % (method, path),
        head_common=b"".join(lines),
        upstream_host=host if core.preserve_host else None,
        chunked_request=chunked,
        has_body=has_body,
        keep_alive=True,
        upgrade=False,
        idempotent=method in IDEMPOTENT_METHODS or idempotency_key,
        request_id=request_id,
        snapshot=snapshot,
        plan=plan,
        info=core.request_info(b"; ".join(cookies) if cookies else None, affinity_value, geo_value),
        now=monotonic(),
    )
    ex.stream = stream
    ex.aborted = False
    return ex


def _field(line: bytes) -> Header:
    """``b"Name: value\\r\\n"`` as an HTTP/2 field (lower-case name)."""
    name, _, value = line.partition(b":")
    return name.lower(), value.strip()


def error_fields(error: ProxyError, request_id: bytes | None, body_len: int) -> list[Header]:
    fields = [
        (b":status", b"%d" % error.status),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % body_len),
        (b"x-router-error", error.code.encode()),
    ]
    if error.retry_after_s is not None:
        fields.append((b"retry-after", b"%d" % max(1, error.retry_after_s)))
    if request_id:
        fields.append((b"x-request-id", request_id))
    return fields


# HTTP status -> gRPC status of a router-made answer (the gRPC spec's mapping, Envoy's too).
_GRPC_STATUS = {400: b"13", 401: b"16", 403: b"7", 404: b"12", 429: b"14", 502: b"14"}
_GRPC_STATUS |= {503: b"14", 504: b"4", 413: b"8", 431: b"8"}
_UNSAFE = re.compile(rb"[^\x20-\x24\x26-\x7e]")  # grpc-message is percent-encoded


def is_grpc(head: list[Header]) -> bool:
    for name, value in head:
        if name == b"content-type":
            return value.startswith(b"application/grpc")
    return False


def grpc_error_fields(error: ProxyError, request_id: bytes | None) -> list[Header]:
    message = _UNSAFE.sub(lambda m: b"%%%02X" % m.group()[0], error.message.encode())
    fields = [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", _GRPC_STATUS.get(error.status, b"2")),
        (b"grpc-message", message),
        (b"x-router-error", error.code.encode()),
    ]
    if request_id:
        fields.append((b"x-request-id", request_id))
    return fields


def error_body(error: ProxyError) -> bytes:
    return orjson.dumps({"error": {"code": error.code, "message": error.message}})


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


class H2Stream:
    """One client stream: the ``ClientSide`` of its exchange (router.proxy.interfaces)."""

    __slots__ = (
        "closed",
        "conn",
        "ended",
        "ex",
        "head",
        "last_active",
        "outbuf",
        "paused",
        "peer",
        "remaining",
        "sent_end",
        "stop_body",
        "stream_id",
        "unacked",
        "writing_paused",
    )

    http11 = False

    def __init__(self, conn: H2Sender, stream_id: int) -> None:
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

    def cork(self) -> None:
        self.conn.cork()

    def uncork(self) -> None:
        self.conn.uncork()

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
