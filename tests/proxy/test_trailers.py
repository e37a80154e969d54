"""HTTP/1.1 chunked trailers pass through both ways; routing and hop-by-hop fields do not.

(Framing fields in a trailer section never get this far: llhttp refuses the message.)
"""

from __future__ import annotations

import asyncio

from tests.backends import (
    probe_passes,
    raw_connection,
    read_head,
    start_raw_region,
)
from tests.conftest import StartRouter, make_config


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(body, trailer section without the final blank line) of a chunked message."""
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        if size == 0:
            break
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    trailers = b""
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        trailers += line
    return body, trailers


async def test_response_trailers_reach_the_client(start_router: StartRouter) -> None:
    async def chunked_with_trailers(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            await read_head(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
                b"5\r\nhello\r\n0\r\nX-Checksum: sha256=abc\r\nKeep-Alive: timeout=5\r\n"
                b"Grpc-Status: 0\r\n\r\n"
            )
            await writer.drain()

    async with start_raw_region(chunked_with_trailers) as region:
        service = await start_router(
            make_config([{"id": "raw", "endpoint": region.url}]), probe=probe_passes
        )
        async with raw_connection(service.proxy_port) as (reader, writer):
            for _ in range(2):  # and the connection stays usable after them
                writer.write(b"GET /t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n")
                head = await asyncio.wait_for(read_head(reader), 5)
                assert b"transfer-encoding: chunked" in head.lower()
                body, trailers = await asyncio.wait_for(_read_chunked(reader), 5)
                assert body == b"hello"
                assert trailers == b"X-Checksum: sha256=abc\r\nGrpc-Status: 0\r\n"


async def test_request_trailers_reach_the_region(start_router: StartRouter) -> None:
    seen: asyncio.Queue[tuple[bytes, bytes, bytes]] = asyncio.Queue()

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_head(reader)
            body, trailers = await _read_chunked(reader)
            await seen.put((head, body, trailers))
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()

    async with start_raw_region(record) as region:
        service = await start_router(
            make_config([{"id": "raw", "endpoint": region.url}]), probe=probe_passes
        )
        async with raw_connection(service.proxy_port) as (reader, writer):
            writer.write(
                b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\nX-Sum: 3\r\nHost: evil.example\r\nTE: trailers\r\n"
                b"Cookie: a=b\r\n\r\n"
            )
            assert (await asyncio.wait_for(read_head(reader), 5)).startswith(b"HTTP/1.1 204")
            head, body, trailers = await asyncio.wait_for(seen.get(), 5)
            assert body == b"abc"
            assert trailers == b"X-Sum: 3\r\nCookie: a=b\r\n"
            assert b"x-sum" not in head.lower()  # a trailer is never made a header
            # Without trailers the body still ends with the plain last chunk.
            writer.write(
                b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\nok\r\n0\r\n\r\n"
            )
            assert (await asyncio.wait_for(read_head(reader), 5)).startswith(b"HTTP/1.1 204")
            _, body, trailers = await asyncio.wait_for(seen.get(), 5)
            assert (body, trailers) == (b"ok", b"")
