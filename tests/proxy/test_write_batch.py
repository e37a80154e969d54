"""Small writes wait for the end of the loop's pass and leave together (router.proxy.batching).

Over real sockets: many clients at once, a lone client (never held), pipelined requests
whose responses share a pass with a large body (written at once, not held), and a client
that goes away while its response is held.
"""

from __future__ import annotations

import asyncio
import hashlib

from pytest_aiohttp import AiohttpServer

from router.proxy.batching import DEFER_MAX_BYTES
from router.service import RouterService
from tests.backends import (
    pattern_sha256,
    raw_connection,
    read_response,
    start_region,
)
from tests.conftest import StartRouter, make_config

CLIENTS = 32


async def router_on_one_region(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> RouterService:
    region = await start_region(aiohttp_server)
    return await start_router(make_config([region.config()]))


async def test_the_responses_of_one_pass_leave_together_and_every_byte_arrives(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    service = await router_on_one_region(aiohttp_server, start_router)
    batch = service.runtime.core.writes
    start = asyncio.Event()

    async def client(i: int) -> list[str]:
        seen = []
        async with raw_connection(service.proxy_port) as (reader, writer):
            await start.wait()
            for n in range(5):
                writer.write(b"GET /c%d/%d HTTP/1.1\r\nHost: a\r\n\r\n" % (i, n))
                seen.append((await read_response(reader)).json()["raw_path"])
        return seen

    tasks = [asyncio.create_task(client(i)) for i in range(CLIENTS)]
    await asyncio.sleep(0)  # every client connected and waiting on the event
    start.set()
    results = await asyncio.gather(*tasks)
    assert results == [[f"/c{i}/{n}" for n in range(5)] for i in range(CLIENTS)]
    # Most of the 160 responses (all but the first of each pass) and of the requests sent
    # on pooled connections went through a batch, and passes carried several at once.
    assert batch.held >= CLIENTS * 5 // 2
    assert batch.largest >= 4, (batch.passes, batch.held, batch.largest)
    assert batch.held > batch.passes
    assert not batch.clients and not batch.upstreams and not batch.scheduled


async def test_a_lone_client_is_never_held(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    """At low load every pass has one read: its write goes at once, adding no latency."""
    service = await router_on_one_region(aiohttp_server, start_router)
    batch = service.runtime.core.writes
    async with raw_connection(service.proxy_port) as (reader, writer):
        for n in range(20):
            writer.write(b"GET /lone/%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
            assert (await read_response(reader)).json()["raw_path"] == f"/lone/{n}"
    assert batch.passes >= 20  # every read went through the batch's pass accounting ...
    assert batch.held == 0  # ... and none was held


async def test_pipelined_small_large_small_arrive_whole_and_in_order(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    service = await router_on_one_region(aiohttp_server, start_router)
    large = 8 * DEFER_MAX_BYTES  # past the hold limit: written as read, not at the pass's end
    async with raw_connection(service.proxy_port) as (reader, writer):
        writer.write(
            b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n" % large
        )
        assert (await read_response(reader)).json()["raw_path"] == "/first"
        body = (await read_response(reader)).body
        assert hashlib.sha256(body).hexdigest() == pattern_sha256(large)
        assert (await read_response(reader)).json()["raw_path"] == "/third"


async def test_a_client_gone_while_its_response_is_held_does_not_stop_the_others(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    service = await router_on_one_region(aiohttp_server, start_router)
    batch = service.runtime.core.writes
    async with (
        raw_connection(service.proxy_port) as (_, gone),
        raw_connection(service.proxy_port) as (reader, writer),
    ):
        request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
        gone.write(request * 3)
        writer.write(request * 3)
        gone.transport.abort()  # its responses may be held when the reset arrives
        for _ in range(3):
            assert (await read_response(reader)).status == 200
    async with raw_connection(service.proxy_port) as (reader, writer):
        writer.write(request)
        assert (await read_response(reader)).status == 200
    assert not batch.clients and not batch.upstreams
