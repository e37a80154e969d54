"""Requests that carry ``Upgrade`` or an unusual method are framed exactly as they arrived.

Regression tests for request smuggling: llhttp skips the body of any request that asks to
upgrade, so an ``Upgrade: foo`` request with a body used to reach the region with its
``Content-Length`` but without its body, and the region read the start of the next request
(from any client, on the pooled connection) as that body. Only a real WebSocket handshake
(GET, ``Upgrade: websocket``, no body) may turn a connection into a tunnel; every other
Upgrade request is an ordinary request whose body is forwarded.
"""

from __future__ import annotations

import hashlib

import pytest
from pytest_aiohttp import AiohttpServer

from tests.backends import (
    closed_by_peer,
    raw_connection,
    raw_exchange,
    read_response,
    region_behind_router,
)
from tests.conftest import StartRouter
from tests.proxy.test_proxy_errors import assert_router_error

UPGRADE_WITH_BODY = {
    "Upgrade: foo, Content-Length": (
        b"POST /first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    ),
    "Upgrade: websocket on a POST, Content-Length": (
        b"POST /first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    ),
    "Upgrade: websocket on a GET with a body": (
        b"GET /first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    ),
    "Upgrade: h2c, chunked": (
        b"POST /first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"
    ),
}

HELLO_SHA256 = hashlib.sha256(b"hello").hexdigest()


@pytest.mark.parametrize("request_bytes", UPGRADE_WITH_BODY.values(), ids=UPGRADE_WITH_BODY)
async def test_upgrade_request_body_is_forwarded_and_the_pool_stays_in_sync(
    aiohttp_server: AiohttpServer, start_router: StartRouter, request_bytes: bytes
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    resp = await raw_exchange(port, request_bytes)
    assert resp.status == 200, resp.body
    seen = resp.json()
    assert seen["raw_path"] == "/first"
    assert (seen["body_length"], seen["body_sha256"]) == (5, HELLO_SHA256)
    names = {k.lower() for k, _ in seen["headers"]}
    assert "upgrade" not in names and "http2-settings" not in names
    # The next request (another client, the same pooled upstream connection) is intact.
    victim = await raw_exchange(port, b"GET /victim HTTP/1.1\r\nHost: x\r\n\r\n")
    assert victim.status == 200, victim.body
    assert victim.json()["raw_path"] == "/victim"
    assert victim.json()["peer_port"] == seen["peer_port"]  # it did reuse that connection
    assert [s.raw_path for s in region.seen] == ["/first", "/victim"]
    assert all("x-forwarded-for" in {k.lower() for k, _ in s.headers} for s in region.seen)


async def test_body_the_size_of_the_rewritten_head_cannot_smuggle_a_request(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    """The attack: make the skipped body exactly as long as the router's own next head, so
    the bytes after it reach the region as a request of their own, without X-Forwarded-*."""
    region, port = await region_behind_router(aiohttp_server, start_router)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    head = (
        b"POST /first HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
        b"X-Request-ID: fixed\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
    )
    async with raw_connection(port) as (reader, writer):
        writer.write(head + smuggled)
        first = await read_response(reader)
        assert first.status == 200
        assert first.json()["body_length"] == len(smuggled)  # the body, not a request
        writer.write(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        second = await read_response(reader)
        assert second.json()["raw_path"] == "/second"
    assert [s.raw_path for s in region.seen] == ["/first", "/second"]


async def test_upgrade_request_keeps_the_connection_for_the_next_request(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    """A refused (ordinary) Upgrade request is answered and the connection stays usable,
    with pipelined requests after it served in order."""
    region, port = await region_behind_router(aiohttp_server, start_router)
    async with raw_connection(port) as (reader, writer):
        writer.write(
            b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
            b"Content-Length: 3\r\n\r\nabc"
            b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n"
            b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        for path, length in (("/a", 3), ("/b", 0), ("/c", 0)):
            resp = await read_response(reader)
            assert resp.status == 200
            assert (resp.json()["raw_path"], resp.json()["body_length"]) == (path, length)
            assert resp.header("Connection") != "close"
    assert [s.raw_path for s in region.seen] == ["/a", "/b", "/c"]


async def test_http10_with_transfer_encoding_is_refused_and_closed(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    """RFC 9112 6.1: after an HTTP/1.0 message with Transfer-Encoding the connection must
    close; like nginx, the router refuses it outright."""
    region, port = await region_behind_router(aiohttp_server, start_router)
    async with raw_connection(port) as (reader, writer):
        writer.write(
            b"POST /te HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            b"GET /after HTTP/1.0\r\nHost: x\r\n\r\n"
        )
        assert_router_error(await read_response(reader), 400, "bad_request")
        assert await closed_by_peer(reader)
    assert region.seen == []


CUSTOM_METHOD_REFUSALS = {
    "two Host headers": (b"BREW /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_request"),
    "body over the limit": (
        b"BREW /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n",
        413,
        "body_too_large",
    ),
    "Transfer-Encoding other than chunked": (
        b"BREW /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
    "no Host": (b"BREW /x HTTP/1.1\r\nX-A: b\r\n\r\n", 400, "bad_request"),
    "head too large": (
        b"BREW /x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 20000 + b"\r\n\r\n",
        431,
        "headers_too_large",
    ),
}


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    CUSTOM_METHOD_REFUSALS.values(),
    ids=CUSTOM_METHOD_REFUSALS,
)
async def test_custom_method_refusals_get_the_json_error(
    aiohttp_server: AiohttpServer,
    start_router: StartRouter,
    request_bytes: bytes,
    status: int,
    code: str,
) -> None:
    region, port = await region_behind_router(
        aiohttp_server, start_router, limits={"max_body": "1MiB"}
    )
    async with raw_connection(port) as (reader, writer):
        writer.write(request_bytes)
        assert_router_error(await read_response(reader), status, code)
        assert await closed_by_peer(reader)
    assert region.seen == []
