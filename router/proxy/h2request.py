"""An HTTP/2 stream's request head, checked and turned into the exchange that forwards it.

The head (pseudo-headers and fields, already HPACK-decoded) is checked the RFC 9113 way
(8.2 and 8.3: lower-case names, no connection-specific fields, ``te`` only ``trailers``,
pseudo-headers first and known, ``:method``/``:scheme``/``:path`` present, no CR/LF/NUL)
in the one walk that builds the HTTP/1.1 request line and head the regions get, with the
same routing, forwarding headers and refusals as ``ClientConnection``.
"""

from __future__ import annotations

import re
from time import monotonic
from typing import TYPE_CHECKING

from router.errors import BadRequest, BodyTooLarge, RouterError
from router.proxy.h2stream import CONNECTION_SPECIFIC, H2Exchange, H2Stream, Header
from router.proxy.headers import (
    FRAMING_LOOKALIKES,
    IDEMPOTENT_METHODS,
    forwarded_fields,
    framing_field,
    valid_host,
)
from router.proxy.paths import needs_normalizing, normalize_path

if TYPE_CHECKING:
    from router.proxy.core import ProxyCore

_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
# Names joined by "\n": a character outside the lower-case token set, or a ":" anywhere
# but at a name's start (pseudo-headers are checked against _PSEUDO on their own).
_BAD_NAMES = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z\n:]|[^\n]:|^$|\n\n|\n$")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")


class StreamError(RouterError):
    """A malformed request: the stream is reset with PROTOCOL_ERROR, nothing is forwarded."""


class RequestHead:
    """What a stream's fields say, gathered in one walk over them (``read_head``)."""

    def __init__(self) -> None:
        self.method: bytes | None = None
        self.scheme: bytes | None = None
        self.path: bytes | None = None
        self.authority: bytes | None = None
        self.lines: list[bytes] = []  # the fields forwarded as they are, as HTTP/1.1 lines
        self.host_field: bytes | None = None
        self.content_length = -1
        self.cookies: list[bytes] = []
        self.xff: bytes | None = None
        self.request_id: bytes | None = None
        self.idempotency_key = False
        self.affinity_value: bytes | None = None
        self.geo_value: bytes | None = None


def read_head(core: ProxyCore, headers: list[Header]) -> RequestHead:
    """One walk over the fields; raises ``StreamError`` or ``BadRequest``."""
    head = RequestHead()
    lines = head.lines
    seen_regular = False
    size = 0
    interesting = core.interesting
    for name, value in headers:
        size += len(name) + len(value) + 32
        if name[:1] == b":":
            if seen_regular:
                raise StreamError("pseudo-header after a regular field")
            _pseudo(head, name, value)
        elif name not in interesting:
            seen_regular = True
            lines.append(b"%b: %b\r\n" % (name, value))
        else:
            seen_regular = True
            _special(core, head, name, value)
    if size > core.max_header_bytes:
        raise StreamError("header list too large")
    # One scan of all names and one of all values rather than two per field.
    if _BAD_NAMES.search(b"\n".join([name for name, _ in headers])) is not None:
        raise StreamError("invalid field name (upper case, or not a token)")
    if _BAD_VALUE.search(b"".join([value for _, value in headers])) is not None:
        raise StreamError("CR, LF or NUL in a field value")
    return head


def _pseudo(head: RequestHead, name: bytes, value: bytes) -> None:
    if name not in _PSEUDO:
        raise StreamError(f"unknown pseudo-header {name!r}")
    if name == b":method":
        if head.method is not None:
            raise StreamError("duplicate :method")
        head.method = value
    elif name == b":path":
        if head.path is not None:
            raise StreamError("duplicate :path")
        head.path = value
    elif name == b":scheme":
        if head.scheme is not None:
            raise StreamError("duplicate :scheme")
        head.scheme = value
    else:
        if head.authority is not None:
            raise StreamError("duplicate :authority")
        head.authority = value


def _special(core: ProxyCore, head: RequestHead, name: bytes, value: bytes) -> None:
    """A field the router reads, rewrites or drops (``core.interesting``)."""
    if name in core.watched:
        if name == b"cookie":
            head.cookies.append(value)  # crumbs are joined into one field (RFC 9113 8.2.3)
            return
        if name == b"idempotency-key":
            head.idempotency_key = True
        elif name == core.affinity_header:
            head.affinity_value = value
        if name == core.geo_header:
            head.geo_value = value
        head.lines.append(b"%b: %b\r\n" % (name, value))
    elif name in CONNECTION_SPECIFIC:
        raise StreamError(f"connection-specific field {name!r}")
    elif name == b"te":
        if value != b"trailers":
            raise StreamError("te other than trailers")
        head.lines.append(b"te: trailers\r\n")
    elif name == b"host":
        head.host_field = value
    elif name == b"content-length":
        if not value.isdigit():
            raise StreamError("invalid content-length")
        head.content_length = int(value)
    elif name == b"x-forwarded-for":
        head.xff = value if head.xff is None else head.xff + b", " + value
    elif name == b"x-request-id":
        if 0 < len(value) <= 200:
            head.request_id = value
    elif name in FRAMING_LOOKALIKES:
        raise BadRequest(f"header {name.decode('latin-1')!r} could be read as a framing header")
    # everything else in REQUEST_SPECIAL is hop-by-hop or rewritten: dropped


def build_exchange(
    core: ProxyCore, stream: H2Stream, headers: list[Header], end_stream: bool
) -> H2Exchange:
    """The exchange for a request head; raises ``StreamError`` or a ``ProxyError``."""
    head = read_head(core, headers)
    method, path, lines, cookies = head.method, head.path, head.lines, head.cookies
    if method is None:
        raise StreamError("missing :method")
    if method == b"CONNECT":
        raise BadRequest("CONNECT is not supported: this is a reverse proxy")
    if path is None or head.scheme is None or not path:
        raise StreamError("missing :path or :scheme")
    if cookies:
        lines.append(b"cookie: %b\r\n" % b"; ".join(cookies))
    host = head.authority if head.authority is not None else head.host_field
    if host is None or not valid_host(host):
        raise BadRequest("missing or invalid :authority")
    if path[:1] != b"/" and path != b"*":
        raise BadRequest("request target must be origin-form")
    snapshot = core.holder.current
    norm = (
        normalize_path(path) if (core.has_routes or needs_normalizing(path)) else ""
    )  # also rejects climbing above the root
    plan = core.plan_for(snapshot, host, norm) if core.has_routes else snapshot.default_plan
    content_length = head.content_length
    if content_length > core.max_body_bytes:
        raise BodyTooLarge(f"request body exceeds {core.max_body_bytes} bytes")
    has_body = not end_stream and content_length != 0
    chunked = has_body and content_length < 0
    request_id = head.request_id or core.next_request_id()
    forwarded_for = stream.peer if head.xff is None else head.xff + b", " + stream.peer
    lines.append(forwarded_fields(forwarded_for, stream.conn.proto, host, request_id))
    framing = framing_field(chunked, content_length)
    if not framing and method in (b"POST", b"PUT", b"PATCH"):
        framing = b"Content-Length: 0\r\n"  # HTTP/1.1 servers expect a length on these
    lines.extend((framing, b"\r\n"))
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
        idempotent=method in IDEMPOTENT_METHODS or head.idempotency_key,
        request_id=request_id,
        snapshot=snapshot,
        plan=plan,
        info=core.request_info(
            b"; ".join(cookies) if cookies else None, head.affinity_value, head.geo_value
        ),
        now=monotonic(),
    )
    ex.stream = stream
    ex.aborted = False
    return ex
