"""Requests reach the region exactly as sent: methods, raw targets, bodies, headers."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from tests.backends import (
    apattern,
    closed_by_peer,
    pattern_sha256,
    raw_connection,
    raw_exchange,
    read_head,
    read_response,
    region_behind_router,
    start_raw_region,
    start_region,
)
from tests.conftest import StartRouter, make_config


async def test_every_method_reaches_the_region(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "PURGE"]
    async with raw_connection(port) as (reader, writer):
        for method in methods:
            writer.write(f"{method} /m HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi".encode())
            resp = await read_response(reader)
            assert resp.status == 200, (method, resp.body)
            seen = resp.json()
            assert (seen["method"], seen["body_length"]) == (method, 2)
    assert [s.method for s in region.seen] == methods


async def test_custom_methods_are_forwarded(start_router: StartRouter) -> None:
    """llhttp (and aiohttp) know a fixed method list; the router forwards any token."""

    async def head_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(head), head))

    async with start_raw_region(head_echo) as region:
        service = await start_router(make_config([{"id": "r1", "endpoint": region.url}]))
        async with raw_connection(service.proxy_port) as (reader, writer):
            for method in (b"FROB", b"X-CUSTOM.v2", b"get"):
                writer.write(method + b" /c?q=1 HTTP/1.1\r\nHost: a\r\n\r\n")
                resp = await read_response(reader)
                assert resp.status == 200
                assert resp.body.startswith(method + b" /c?q=1 HTTP/1.1\r\n")
        # a method that is not a token is still malformed
        resp = await raw_exchange(service.proxy_port, b"FR(B / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert resp.status == 400


async def test_head_has_length_but_no_body_and_connection_stays_usable(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    async with raw_connection(port) as (reader, writer):
        for _ in range(3):
            writer.write(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: a\r\n\r\n")
            resp = await read_response(reader, head_request=True)
            assert resp.status == 200
            assert resp.header("Content-Length") == "1000"
            assert resp.header("Transfer-Encoding") is None
        writer.write(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await read_response(reader)
        assert resp.json()["raw_path"] == "/after"
    assert [s.method for s in region.seen] == ["HEAD"] * 3 + ["GET"]
    assert len(region.peer_ports) == 1  # HEAD left the upstream connection reusable


@pytest.mark.parametrize(
    "target",
    [
        "/a%2Fb/c%20d?x=1&x=2&y=%2F",
        "/p;param=1/q;v?k=v;w=2",
        "/?",
        "/%E2%9C%93/caf%C3%A9?q=%u00e9&r=%F0%9F%98%80",
        "/a/./b/../c",
        "//double//slash/?a=b?c",
        "/UPPER/%7Euser?Q=A+B&empty=&=v&flag",
        "/x?a=%zz&b=%",
    ],
)
async def test_raw_target_is_forwarded_byte_for_byte(
    aiohttp_server: AiohttpServer, start_router: StartRouter, target: str
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    resp = await raw_exchange(port, f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert resp.status == 200
    assert resp.json()["raw_path"] == target
    assert region.seen[0].raw_path == target


async def test_an_endpoint_path_prefixes_the_raw_target(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region = await start_region(aiohttp_server)
    endpoint = f"{region.url}/base/v1"
    service = await start_router(make_config([{"id": "r1", "endpoint": endpoint}]))
    for target in ("/a%2Fb?x=1&x=2", "/"):
        resp = await raw_exchange(
            service.proxy_port, f"POST {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
        )
        assert resp.status == 200
        assert region.seen[-1].raw_path == "/base/v1" + target
        assert region.seen[-1].method == "POST"
        assert region.seen[-1].header("Host") == f"127.0.0.1:{region.port}"


async def test_bodies_upload_unchanged(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    size = 3 * 1024 * 1024 + 17
    url = f"http://127.0.0.1:{port}/upload"
    async with aiohttp.ClientSession() as session:
        # Content-Length upload, streamed
        async with session.post(
            url, data=apattern(size), headers={"Content-Length": str(size)}
        ) as resp:
            seen = await resp.json()
        assert (seen["body_length"], seen["body_sha256"]) == (size, pattern_sha256(size))
        assert region.seen[-1].header("Content-Length") == str(size)
        assert region.seen[-1].header("Transfer-Encoding") is None
        # chunked upload: re-framed by the router, still chunked upstream
        async with session.put(url, data=apattern(size, block=1000)) as resp:
            seen = await resp.json()
        assert (seen["body_length"], seen["body_sha256"]) == (size, pattern_sha256(size))
        assert region.seen[-1].header("Transfer-Encoding") == "chunked"
        # empty POST
        async with session.post(url, data=b"") as resp:
            seen = await resp.json()
        assert seen["body_length"] == 0
        assert region.seen[-1].header("Content-Length") == "0"


async def test_chunked_extensions_and_trailers_are_reframed(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    _, port = await region_behind_router(aiohttp_server, start_router)
    body = b"3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n"
    async with raw_connection(port) as (reader, writer):
        writer.write(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        resp = await read_response(reader)
        assert resp.json()["body_sha256"] == hashlib.sha256(b"abcdefg").hexdigest()
        writer.write(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(reader)).json()["raw_path"] == "/next"


async def test_expect_100_continue_is_answered_by_the_router(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    async with raw_connection(port) as (reader, writer):
        writer.write(
            b"PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        interim = await read_response(reader)
        assert interim.status == 100
        writer.write(b"hello")
        resp = await read_response(reader)
        assert resp.status == 200
        assert resp.json()["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert region.seen[0].header("Expect") is None


async def test_request_headers_forwarding(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    head = (
        b"GET /h HTTP/1.1\r\n"
        b"Host: front.example:8443\r\n"
        b"Connection: keep-alive, X-Named-Hop\r\n"
        b"X-Named-Hop: drop me\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"TE: gzip\r\n"
        b"Trailer: X-Sum\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Authorization: Basic c2VjcmV0\r\n"
        b"X-Forwarded-For: 203.0.113.9\r\n"
        b"X-Forwarded-For: 198.51.100.1\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: spoofed\r\n"
        b"X-Request-ID: req-42\r\n"
        b"x-MiXeD-Case: Value  with  spaces\r\n"
        b"Authorization: Bearer kept\r\n"
        b"\r\n"
    )
    resp = await raw_exchange(port, head)
    assert resp.status == 200
    assert resp.header("X-Request-ID") == "req-42"
    assert resp.header("X-Router-Region") == "r1"
    seen = region.seen[0]
    names = {k.lower() for k, _ in seen.headers}
    for hop in (
        "connection",
        "x-named-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
    ):
        assert hop not in names, hop
    assert seen.header("Host") == f"127.0.0.1:{region.port}"
    assert seen.header_all("X-Forwarded-For") == ["203.0.113.9, 198.51.100.1, 127.0.0.1"]
    assert seen.header_all("X-Forwarded-Proto") == ["http"]
    assert seen.header_all("X-Forwarded-Host") == ["front.example:8443"]
    assert seen.header_all("X-Request-ID") == ["req-42"]
    assert ("x-MiXeD-Case", "Value  with  spaces") in seen.headers
    assert seen.header("Authorization") == "Bearer kept"


async def test_te_trailers_passes_and_request_id_is_created(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    resp = await raw_exchange(port, b"GET /t HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
    seen = region.seen[0]
    assert seen.header("TE") == "trailers"
    assert seen.header_all("X-Forwarded-For") == ["127.0.0.1"]
    created = seen.header("X-Request-ID")
    assert created
    assert resp.header("X-Request-ID") == created


async def test_preserve_host_keeps_the_clients_host(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router, preserve_host=True)
    await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
    assert region.seen[0].header_all("Host") == ["api.example.com"]


async def test_response_hop_by_hop_headers_are_removed(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    _, port = await region_behind_router(aiohttp_server, start_router)
    resp = await raw_exchange(port, b"GET /hop HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.status == 200
    assert resp.body == b"hop"
    names = {k.lower() for k, _ in resp.headers}
    for hop in ("x-hop-named", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert hop not in names, hop
    assert "proxy-connection" not in names
    assert resp.header("Connection") in (None, "keep-alive")
    assert resp.header("X-Kept") == "yes"
    assert resp.header("X-Router-Region") == "r1"


async def test_response_headers_can_be_turned_off(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    _, port = await region_behind_router(
        aiohttp_server, start_router, response_headers={"region": False, "request_id": False}
    )
    resp = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.status == 200
    assert resp.header("X-Router-Region") is None
    assert resp.header("X-Request-ID") is None


async def test_gzip_body_passes_undecoded(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    from tests.backends import GZIP_BODY

    _, port = await region_behind_router(aiohttp_server, start_router)
    resp = await raw_exchange(
        port, b"GET /gzip HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n"
    )
    assert resp.header("Content-Encoding") == "gzip"
    assert resp.body == GZIP_BODY
    assert resp.header("Content-Length") == str(len(GZIP_BODY))


async def test_no_body_statuses_keep_the_connection_usable(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    async with raw_connection(port) as (reader, writer):
        for code in (204, 304, 204):
            writer.write(f"GET /status/{code} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            resp = await read_response(reader)
            assert resp.status == code
            assert resp.header("Transfer-Encoding") is None
        writer.write(b"GET /end HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(reader)).json()["raw_path"] == "/end"
    assert len(region.peer_ports) == 1


async def test_client_connection_management(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    _, port = await region_behind_router(aiohttp_server, start_router)
    # HTTP/1.0 with keep-alive: answered with a length, and the connection stays open
    async with raw_connection(port) as (reader, writer):
        for i in range(2):
            writer.write(b"GET /ten%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % i)
            resp = await read_response(reader)
            assert resp.header("Connection") == "keep-alive"
            assert resp.json()["raw_path"] == f"/ten{i}"
            assert resp.json()["version"] == "1.1"  # the region is spoken to in HTTP/1.1
    # HTTP/1.0 without keep-alive, and HTTP/1.1 with Connection: close: closed after
    for head in (
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ):
        async with raw_connection(port) as (reader, writer):
            writer.write(head)
            resp = await read_response(reader)
            assert resp.status == 200
            assert resp.header("Connection") == "close"
            assert await closed_by_peer(reader)


async def test_h2c_upgrade_is_ignored_and_served_as_http11(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    resp = await raw_exchange(
        port,
        b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    assert resp.status == 200
    names = {k.lower() for k, _ in region.seen[0].headers}
    assert not names & {"upgrade", "connection", "http2-settings"}
