"""A Content-Length body that comes in the same read as its head is relayed without the
parser (router/proxy/upstream.py, ``UpstreamConnection._parse``): the bytes, the framing
and the reuse of the connection must be exactly what parsing them gave."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

from router.service import RouterService
from tests.backends import (
    pattern,
    pattern_sha256,
    probe_passes,
    raw_connection,
    read_head,
    read_response,
    start_raw_region,
)
from tests.conftest import StartRouter, make_config
from tests.h2client import H2Client

BIG = 70_000  # more than one 64 KiB read of the router's, and far past the head-first minimum

Answer = Callable[[int, asyncio.StreamWriter], Awaitable[None]]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def body(n: int) -> bytes:
    return b"".join(pattern(n))


async def serve(answer: Answer) -> Handler:
    """A keep-alive region that answers the i-th request on a connection with ``answer(i)``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        i = 0
        while True:
            await read_head(reader)
            await answer(i, writer)
            await writer.drain()
            i += 1

    return handler


async def router_to(start_router: StartRouter, url: str, **settings: object) -> RouterService:
    """A router whose one region is ``url``, probes passing."""
    config = make_config([{"id": "r1", "endpoint": url}], **settings)
    return await start_router(config, probe=probe_passes)


async def get_many(port: int, paths: list[bytes]) -> list[tuple[int, bytes, bytes]]:
    """GET each path in turn on one client connection: (status, head, body) of each."""
    out = []
    async with raw_connection(port) as (reader, writer):
        for path in paths:
            writer.write(b"GET %b HTTP/1.1\r\nHost: a\r\n\r\n" % path)
            resp = await read_response(reader)
            out.append((resp.status, resp.head, resp.body))
    return out


async def test_head_and_body_in_one_read_and_in_pieces_keep_the_connection(
    start_router: StartRouter,
) -> None:
    async def answer(i: int, writer: asyncio.StreamWriter) -> None:
        data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-I: %d\r\n\r\n%b" % (BIG, i, body(BIG))
        if i % 2 == 0:
            writer.write(data)  # head and the whole body in one write
        else:
            # head and 5000 body bytes, then the rest in three pieces: the relay counts
            # the body down over several reads
            writer.write(data[: len(data) - BIG + 5000])
            rest = data[len(data) - BIG + 5000 :]
            for k in range(3):
                await writer.drain()
                await asyncio.sleep(0.01)
                writer.write(rest[k * len(rest) // 3 : (k + 1) * len(rest) // 3])

    async with start_raw_region(await serve(answer)) as region:
        service = await router_to(start_router, region.url)
        got = await get_many(service.proxy_port, [b"/a", b"/b", b"/c", b"/d"])
        for i, (status, head, data) in enumerate(got):
            assert status == 200
            assert b"X-I: %d\r\n" % i in head
            assert b"Content-Length: %d\r\n" % BIG in head
            assert hashlib.sha256(data).hexdigest() == pattern_sha256(BIG)
        assert region.connections == 1  # every response left the connection reusable


async def test_bytes_past_the_length_are_dropped_and_the_connection_closed(
    start_router: StartRouter,
) -> None:
    async def answer(i: int, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n%b" % body(5000)
            + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra"
        )

    async with start_raw_region(await serve(answer)) as region:
        service = await router_to(start_router, region.url)
        got = await get_many(service.proxy_port, [b"/a", b"/b"])
        for status, _, data in got:
            assert status == 200
            assert data == body(5000)
        assert region.connections == 2  # the confused connection was not reused


async def test_interim_response_then_body_in_one_read(start_router: StartRouter) -> None:
    async def answer(i: int, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (BIG, body(BIG))
        )

    async with start_raw_region(await serve(answer)) as region:
        service = await router_to(start_router, region.url)
        got = await get_many(service.proxy_port, [b"/a", b"/b"])
        for status, head, data in got:
            assert status == 200
            assert b"103" not in head
            assert data == body(BIG)
        assert region.connections == 1


async def test_chunked_body_in_the_same_read_as_its_head(start_router: StartRouter) -> None:
    async def answer(i: int, writer: asyncio.StreamWriter) -> None:
        chunk = body(9000)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%b\r\n0\r\n\r\n" % (len(chunk), chunk)
        )

    async with start_raw_region(await serve(answer)) as region:
        service = await router_to(start_router, region.url)
        async with raw_connection(service.proxy_port) as (reader, writer):
            for _ in range(2):
                writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                resp = await read_response(reader)
                assert resp.header("Transfer-Encoding") == "chunked"
                assert resp.body == body(9000)
        assert region.connections == 1


async def test_retried_5xx_with_a_long_body_then_the_answer(start_router: StartRouter) -> None:
    async def answer(i: int, writer: asyncio.StreamWriter) -> None:
        status = b"503 Service Unavailable" if i == 0 else b"200 OK"
        writer.write(b"HTTP/1.1 %b\r\nContent-Length: %d\r\n\r\n%b" % (status, BIG, body(BIG)))

    async with start_raw_region(await serve(answer)) as region:
        config = make_config(
            [{"id": "r1", "endpoint": region.url}],
            retries={"max_retries": 1, "on": ["503"]},
        )
        service = await start_router(config, probe=probe_passes)
        ((status, _, data),) = await get_many(service.proxy_port, [b"/a"])
        assert status == 200
        assert data == body(BIG)
        assert region.connections == 1  # the discarded 503 was read to its end, then reused


async def test_websocket_bytes_in_the_read_of_the_101(start_router: StartRouter) -> None:
    early = body(6000)

    async def answer(i: int, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: x\r\n\r\n" + early
        )

    async with start_raw_region(await serve(answer)) as region:
        service = await router_to(start_router, region.url)
        async with raw_connection(service.proxy_port) as (reader, writer):
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            head = await read_head(reader)
            assert head.startswith(b"HTTP/1.1 101 ")
            assert await asyncio.wait_for(reader.readexactly(len(early)), 5) == early


async def test_an_h2_stream_that_stalled_the_last_read_leaves_the_connection_reading(
    start_router: StartRouter,
) -> None:
    """A client with HTTP/2's default 64 KiB window blocks the stream, and so pauses the
    region connection's reads, on every response larger than that. When the read that ends
    the response is the one that blocks, the connection went back to the pool paused, and
    the next request on it waited for an answer it never read (a hang until the response
    timeout). The HTTP/1.1 client path pauses from the transport's deferred write, after the
    exchange let the connection go, so it did not hit this; the pool's fix covers both."""
    size = 300_000

    async def answer(i: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (size, body(size)))

    async with start_raw_region(await serve(answer)) as region:
        service = await router_to(
            start_router, region.url, http2={"enabled": True, "max_concurrent_streams": 100}
        )
        client = H2Client(window=65535)
        await client.connect(service.proxy_port)
        try:
            for _ in range(3):
                resp = await client.request("/big", timeout_s=5)
                assert resp.status == 200
                assert hashlib.sha256(resp.body).hexdigest() == pattern_sha256(size)
        finally:
            await client.close()
        assert region.connections == 1
