"""Responses stream back as the region sent them: framing, SSE, WebSockets, reuse, pipelining."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
from aiohttp import WSMsgType
from pytest_aiohttp import AiohttpServer

from tests.backends import (
    closed_by_peer,
    pattern_sha256,
    raw_connection,
    read_head,
    read_response,
    region_behind_router,
    start_raw_region,
)
from tests.conftest import StartRouter, make_config


async def test_content_length_and_chunked_downloads(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    _, port = await region_behind_router(aiohttp_server, start_router)
    size = 5 * 1024 * 1024 + 3
    async with raw_connection(port) as (reader, writer):
        writer.write(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
        resp = await read_response(reader)
        assert resp.header("Content-Length") == str(size)
        assert hashlib.sha256(resp.body).hexdigest() == pattern_sha256(size)
        writer.write(b"GET /bytes/%d?chunked=1 HTTP/1.1\r\nHost: a\r\n\r\n" % size)
        resp = await read_response(reader)
        assert resp.header("Transfer-Encoding") == "chunked"
        assert resp.header("Content-Length") is None
        assert hashlib.sha256(resp.body).hexdigest() == pattern_sha256(size)


async def _close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer one request with a body whose end is the connection's end (no length)."""
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
    for i in range(50):
        writer.write(b"part %d;" % i)
        await writer.drain()
    writer.write(b"end")


EXPECTED_UNTIL_CLOSE = b"".join(b"part %d;" % i for i in range(50)) + b"end"


async def test_unknown_length_body_is_chunked_to_http11_clients(
    start_router: StartRouter,
) -> None:
    async with start_raw_region(_close_delimited) as region:
        service = await start_router(make_config([{"id": "r1", "endpoint": region.url}]))
        async with raw_connection(service.proxy_port) as (reader, writer):
            for _ in range(2):  # the client connection survives the upstream's close
                writer.write(b"GET /u HTTP/1.1\r\nHost: a\r\n\r\n")
                resp = await read_response(reader)
                assert resp.status == 200
                assert resp.header("Transfer-Encoding") == "chunked"
                assert resp.header("Connection") is None
                assert resp.body == EXPECTED_UNTIL_CLOSE


async def test_unknown_length_body_is_close_delimited_to_http10_clients(
    start_router: StartRouter,
) -> None:
    async with start_raw_region(_close_delimited) as region:
        service = await start_router(make_config([{"id": "r1", "endpoint": region.url}]))
        async with raw_connection(service.proxy_port) as (reader, writer):
            writer.write(b"GET /u HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
            resp = await read_response(reader)
            assert resp.header("Transfer-Encoding") is None
            assert resp.header("Content-Length") is None
            assert resp.header("Connection") == "close"
            assert resp.body == EXPECTED_UNTIL_CLOSE  # read to EOF


async def test_truncated_upstream_body_cuts_the_client_off(start_router: StartRouter) -> None:
    async def truncating(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this")

    async with start_raw_region(truncating) as region:
        service = await start_router(make_config([{"id": "r1", "endpoint": region.url}]))
        async with raw_connection(service.proxy_port) as (reader, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            head = await read_head(reader)
            assert b"Content-Length: 1000" in head
            assert await reader.read() == b"only this"  # then EOF, never a full body


async def test_sse_events_arrive_one_at_a_time(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/sse/3") as resp,
    ):
        assert resp.headers["Content-Type"] == "text/event-stream"
        for i in range(3):
            region.sse_gate.release()  # the region sends event i only now
            async with asyncio.timeout(5):
                event = await resp.content.readuntil(b"\n\n")
            assert event == b"data: %d\n\n" % i
            assert region.sse_gate.locked()  # event i+1 has not been sent yet
        async with asyncio.timeout(5):
            assert await resp.content.read() == b""


async def test_websocket_frames_and_close_codes_pass_both_ways(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    url = f"http://127.0.0.1:{port}/ws"
    async with aiohttp.ClientSession() as session:
        # client closes: the region sees the client's code and reason
        async with session.ws_connect(url) as ws:
            await ws.send_str("hello")
            assert await ws.receive_str(timeout=5) == "hello"
            blob = bytes(range(256)) * 300
            await ws.send_bytes(blob)
            assert await ws.receive_bytes(timeout=5) == blob
            await ws.close(code=4001, message=b"client says bye")
        async with asyncio.timeout(5):
            await region.ws_closed.wait()
        assert region.ws_closes == [(4001, "client says bye")]
        # region closes: the client sees the region's code and reason
        async with session.ws_connect(url) as ws:
            await ws.send_str("close 4002 region says bye")
            msg = await ws.receive(timeout=5)
            assert msg.type is WSMsgType.CLOSE
            assert (msg.data, msg.extra) == (4002, "region says bye")
        assert ws.close_code == 4002


async def test_websocket_refused_by_region_is_relayed(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    _, port = await region_behind_router(aiohttp_server, start_router)
    async with raw_connection(port) as (reader, writer):
        writer.write(
            b"GET /not-a-ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        resp = await read_response(reader)
        assert resp.status == 200  # the echo route does not upgrade
        assert resp.header("Connection") == "close"
        assert await closed_by_peer(reader)


async def test_keep_alive_reuses_upstream_connections(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    connector = aiohttp.TCPConnector(limit=4)
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(40):
            async with session.get(f"http://127.0.0.1:{port}/k{i}") as resp:
                assert resp.status == 200
                await resp.read()

        async def one(i: int) -> None:
            async with session.post(f"http://127.0.0.1:{port}/p{i}", data=b"x" * 100) as resp:
                assert (await resp.json())["body_length"] == 100

        await asyncio.gather(*(one(i) for i in range(40)))
    assert len(region.seen) == 80
    assert len(region.peer_ports) <= 4  # at most one upstream connection per client one


async def test_pipelined_requests_are_answered_in_order(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    requests = (
        b"GET /delay/0.3 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        b"PUT /third HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
        b"HEAD /bytes/10 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /fifth HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    async with raw_connection(port) as (reader, writer):
        writer.write(requests)
        first = await read_response(reader)
        assert first.json()["raw_path"] == "/delay/0.3"
        second = (await read_response(reader)).json()
        assert (second["raw_path"], second["body_length"]) == ("/second", 5)
        third = (await read_response(reader)).json()
        assert (third["raw_path"], third["body_sha256"]) == (
            "/third",
            hashlib.sha256(b"abc").hexdigest(),
        )
        fourth = await read_response(reader, head_request=True)
        assert fourth.header("Content-Length") == "10"
        assert (await read_response(reader)).json()["raw_path"] == "/fifth"
    assert [s.raw_path for s in region.seen] == [
        "/delay/0.3",
        "/second",
        "/third",
        "/bytes/10",
        "/fifth",
    ]
