"""Header rules decided once: hop-by-hop sets, head builders, router-made error responses."""

from __future__ import annotations

import orjson

from router.errors import ProxyError

# Never forwarded in either direction (RFC 9110 7.6.1 plus the usual extras).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

# Trailer fields never passed on (either way): framing, routing and hop-by-hop fields
# (RFC 9110 6.5.1), which a recipient could mistake for the message's own.
TRAILER_DROP = HOP_BY_HOP | frozenset(
    {b"content-length", b"host", b"content_length", b"transfer_encoding"}
)

# Names a region may read as a framing header (CGI-style servers map "_" to "-"): a request
# carrying one is refused, since the region could frame its body differently from us.
FRAMING_LOOKALIKES = frozenset({b"content_length", b"transfer_encoding"})

# Request headers the proxy consumes or rewrites itself (everything else passes verbatim).
REQUEST_SPECIAL = (
    HOP_BY_HOP
    | FRAMING_LOOKALIKES
    | {
        b"host",
        b"content-length",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
        b"expect",
    }
)

# What a Host value may hold (RFC 3986 reg-name, IPv4, IP-literal, port) less the comma,
# which would make one Host read as a list. Deleting these leaves nothing of a valid Host.
HOST_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()*+;=:[]"


def valid_host(host: bytes) -> bool:
    """A non-empty Host of allowed characters only (nginx refuses the rest with 400 too)."""
    return bool(host) and not host.translate(None, HOST_CHARS)


RESPONSE_SPECIAL = HOP_BY_HOP | {b"content-length"}

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Metric label values for methods; anything else is counted as "OTHER" (bounded cardinality).
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)

CRLF = b"\r\n"

# Status codes as bytes and as metric labels, made once: ``%d`` and ``str()`` per response
# cost an allocation and, compiled, the generic formatter (mypyc builds ``%b`` inline).
# llhttp takes three digits only; ``status_bytes``/``status_label`` cover the rest anyway.
_STATUS_BYTES = tuple(b"%d" % code for code in range(1000))
_STATUS_LABELS = tuple(str(code) for code in range(1000))


def status_bytes(status: int) -> bytes:
    return _STATUS_BYTES[status] if 0 <= status < 1000 else b"%d" % status


def status_label(status: int) -> str:
    return _STATUS_LABELS[status] if 0 <= status < 1000 else str(status)


def name_lengths(names: frozenset[bytes] | set[bytes]) -> frozenset[int]:
    """The lengths of ``names``: a field whose name has none of them is not among them, so
    the per-field ``lower()`` and set lookup are skipped for most of a response's fields."""
    return frozenset(len(name) for name in names)


_PLAIN_CONNECTION = {
    v: frozenset({v.lower()}) for v in (b"keep-alive", b"Keep-Alive", b"close", b"Close")
}


def connection_tokens(value: bytes) -> frozenset[bytes]:
    """The lower-case tokens of a Connection header (the common values without parsing)."""
    plain = _PLAIN_CONNECTION.get(value)
    if plain is not None:
        return plain
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


def named_headers(tokens: frozenset[bytes] | None) -> frozenset[bytes]:
    """Headers a Connection header names beyond the hop-by-hop ones removed anyway."""
    if not tokens or tokens <= HOP_BY_HOP:
        return _NONE_NAMED  # "keep-alive", "close": no set built per message
    return tokens - HOP_BY_HOP


_NONE_NAMED: frozenset[bytes] = frozenset()


def error_response(
    error: ProxyError, request_id: bytes | None, *, close: bool, head_only: bool = False
) -> bytes:
    body = orjson.dumps({"error": {"code": error.code, "message": error.message}})
    lines = [
        b"HTTP/1.1 %d %s" % (error.status, _REASONS.get(error.status, b"Error")),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"X-Router-Error: " + error.code.encode(),
    ]
    if error.retry_after_s is not None:
        lines.append(b"Retry-After: %d" % max(1, error.retry_after_s))
    if request_id:
        lines.append(b"X-Request-ID: " + request_id)
    if close:
        lines.append(b"Connection: close")
    head = CRLF.join(lines) + CRLF + CRLF
    return head if head_only else head + body


_REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def forwarded_fields(xff: bytes, proto: bytes, host: bytes, request_id: bytes) -> bytes:
    """The fields the router adds to every request it forwards, from either protocol."""
    return (
        b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\nX-Forwarded-Host: %b\r\n"
        b"X-Request-ID: %b\r\n" % (xff, proto, host, request_id)
    )


def framing_field(chunked: bool, content_length: int) -> bytes:
    """The forwarded body's framing: chunked, a length, or none (no body)."""
    if chunked:
        return b"Transfer-Encoding: chunked\r\n"
    if content_length >= 0:
        return b"Content-Length: %d\r\n" % content_length
    return b""
