"""The router's own answers on an HTTP/2 stream: a JSON error, or for a gRPC client a
trailers-only answer with ``grpc-status`` (as Envoy's local replies are)."""

from __future__ import annotations

import re

import orjson

from router.errors import ProxyError

Header = tuple[bytes, bytes]


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
