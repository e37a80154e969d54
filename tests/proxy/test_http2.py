"""HTTP/2 from clients: h2c with prior knowledge and ALPN h2, each stream one request with
the HTTP/1.1 path's semantics; regions still get HTTP/1.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from router.service import RouterService
from tests.backends import (
    Region,
    pattern_sha256,
    probe_passes,
    raw_exchange,
    router_process,
    start_region,
)
from tests.conftest import StartRouter, make_config
from tests.h2client import H2Client
from tests.poll import eventually
from tests.tls import StartHttps, client_context, https_get

AiohttpServer = Any
H2 = {"enabled": True, "max_concurrent_streams": 100}


async def until(check: Callable[[], bool], what: str = "condition", timeout_s: float = 5) -> None:
    async def holds() -> bool:
        return check()

    await eventually(holds, timeout_s, what)


ConnectH2 = Callable[..., Awaitable[H2Client]]
StartH2 = Callable[..., Awaitable[tuple[Region, RouterService, H2Client]]]


@pytest.fixture
async def connect_h2(start_router: StartRouter) -> AsyncIterator[ConnectH2]:
    """``await connect_h2(port, ssl_ctx=None, **H2Client options)``: a connected client,
    closed when the test ends (before the routers stop: this fixture needs start_router)."""
    clients: list[H2Client] = []

    async def connect(port: int, ssl_ctx: ssl.SSLContext | None = None, **kwargs: Any) -> H2Client:
        client = H2Client(**kwargs)
        clients.append(client)
        await client.connect(port, ssl_ctx=ssl_ctx)
        return client

    yield connect
    for client in clients:
        await client.close()


@pytest.fixture
def h2_router(
    aiohttp_server: AiohttpServer, start_router: StartRouter, connect_h2: ConnectH2
) -> StartH2:
    """``region, service, client = await h2_router(window=None, **sections)``: region r1
    behind a router with ``http2: H2`` (unless ``sections`` say otherwise; health probes
    pass), and an h2c client connected to it (with that stream ``window``, if given)."""

    async def start(
        window: int | None = None, **sections: Any
    ) -> tuple[Region, RouterService, H2Client]:
        region = await start_region(aiohttp_server, "r1")
        config = make_config([region.config()], **{"http2": H2, **sections})
        service = await start_router(config, probe=probe_passes)
        options = {} if window is None else {"window": window}
        return region, service, await connect_h2(service.proxy_port, **options)

    return start


async def test_h2c_prior_knowledge_streams_are_proxied_over_http11(h2_router: StartH2) -> None:
    _, service, client = await h2_router()
    responses = await asyncio.gather(
        *(
            client.request(
                f"/items/{i}?q=1",
                headers=[("x-test", str(i)), ("cookie", "a=1"), ("cookie", "b=2")],
            )
            for i in range(5)
        )
    )
    for i, resp in enumerate(responses):
        assert resp.status == 200, resp
        seen = json.loads(resp.body)
        assert seen["raw_path"] == f"/items/{i}?q=1"
        assert seen["version"] == "HTTP/1.1" or seen["version"] == "1.1"
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert headers["host"] == "example.com" or headers["host"].startswith("127.0.0.1")
        assert headers["x-test"] == str(i)
        assert headers["cookie"] == "a=1; b=2"
        assert headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-host"] == "example.com"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert resp.header("x-router-region") == "r1"
        assert resp.header("x-request-id") == headers["x-request-id"]
    # a body both ways, with and without content-length
    up = await client.request("/upload", method="POST", body=b"x" * 200_000)
    assert json.loads(up.body)["body_length"] == 200_000
    big = await client.request("/bytes/3000000")
    assert len(big.body) == 3_000_000
    assert hashlib.sha256(big.body).hexdigest() == pattern_sha256(3_000_000)
    # HTTP/1.1 on the same listener is unchanged
    plain = await raw_exchange(service.proxy_port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert plain.status == 200


async def test_router_made_errors_are_json_on_the_stream(h2_router: StartH2) -> None:
    region, _, client = await h2_router(retries={"max_retries": 0})
    region.fail_status = 503
    climb = await client.request("/../../etc/passwd")
    assert climb.status == 400
    assert climb.header("x-router-error") is not None
    assert "error" in json.loads(climb.body)
    failed = await client.request("/x")
    assert failed.status == 503
    ok = await client.request("/health")  # the connection is still usable
    assert ok.status in (200, 503)


async def test_alpn_h2_on_https(
    start_https: StartHttps, ca: trustme.CA, connect_h2: ConnectH2
) -> None:
    port = (await start_https(http2=H2)).port
    client = await connect_h2(port, client_context(ca, alpn=["h2", "http/1.1"]))
    assert client.alpn == "h2"
    resp = await client.request("/secure")
    assert resp.status == 200
    seen = json.loads(resp.body)
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["x-forwarded-proto"] == "https"
    # a client that offers only http/1.1 (or no ALPN) gets HTTP/1.1 on the same listener
    for alpn in (["http/1.1"], None):
        old = await https_get(port, client_context(ca, alpn=alpn), "localhost")
        assert old.alpn == (alpn[0] if alpn else None)
        assert old.response.status == 200


async def test_http2_off_leaves_the_preface_to_http11(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region = await start_region(aiohttp_server, "r1")
    service = await start_router(make_config([region.config()]), probe=probe_passes)
    resp = await raw_exchange(service.proxy_port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert resp.status == 400


async def test_a_stalled_download_does_not_block_other_streams(h2_router: StartH2) -> None:
    _, _, client = await h2_router(window=65535)
    size = 20 * 1024 * 1024
    sid = client.conn.get_next_available_stream_id()
    client.stalled.add(sid)
    big = client.start(f"/bytes/{size}")
    assert big.stream_id == sid
    await until(lambda: len(big.body) == 65535)
    for i in range(20):  # small requests on the same connection meanwhile
        small = await client.request(f"/small/{i}", timeout_s=5)
        assert small.status == 200
    assert len(big.body) == 65535 and not big.done.is_set()
    client.unstall(sid)
    await asyncio.wait_for(big.done.wait(), 20)
    assert len(big.body) == size
    assert hashlib.sha256(big.body).hexdigest() == pattern_sha256(size)


async def test_client_reset_cancels_that_region_request_only(h2_router: StartH2) -> None:
    region, _, client = await h2_router()
    slow = client.start("/delay/5")
    other = client.start("/delay/0.3")
    await until(lambda: len(region.seen) == 2)
    client.reset(slow.stream_id)
    await asyncio.wait_for(region.cancelled.wait(), 3)
    resp = await asyncio.wait_for(other.done.wait(), 5)
    assert resp is True and other.status == 200
    assert (await client.request("/after")).status == 200


async def test_goaway_on_shutdown_lets_open_streams_finish(h2_router: StartH2) -> None:
    region, service, client = await h2_router()
    slow = client.start("/delay/0.5")
    await until(lambda: len(region.seen) == 1)
    stopping = asyncio.get_running_loop().create_task(service.stop(grace_s=5))
    await until(lambda: client.goaway is not None)
    assert client.goaway is not None
    assert client.goaway.error_code == 0
    assert client.goaway.last_stream_id == slow.stream_id
    await asyncio.wait_for(slow.done.wait(), 5)
    assert client.error is None
    assert slow.status == 200
    assert await stopping
    await asyncio.wait_for(client.closed.wait(), 5)


async def test_stream_and_header_limits(h2_router: StartH2) -> None:
    region, _, client = await h2_router(
        http2={"enabled": True, "max_concurrent_streams": 3},
        limits={"max_header_bytes": "4KiB"},
    )
    await until(lambda: bool(client.remote_settings))
    assert client.remote_settings[0x3] == 3  # MAX_CONCURRENT_STREAMS
    assert client.remote_settings[0x6] == 4096  # MAX_HEADER_LIST_SIZE
    big = await client.request("/big", headers=[("x-big", "a" * 5000)])
    assert big.reset_code == 0x1  # PROTOCOL_ERROR: refused, never forwarded
    assert all(s.raw_path != "/big" for s in region.seen)
    ok = await asyncio.gather(*(client.request(f"/d{i}") for i in range(3)))
    assert [r.status for r in ok] == [200, 200, 200]


async def test_1000_requests_over_100_streams_of_one_connection_under_2s(
    start_router: StartRouter, connect_h2: ConnectH2
) -> None:
    # The region runs in its own process: the bar is the router's, not an in-process
    # aiohttp region's (which alone needs more than 2 s of this loop for 1000 requests).
    region = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.delay_region", "0.05", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert region.stdout is not None
        port = int(await asyncio.wait_for(region.stdout.readline(), 10))
        config = make_config([{"id": "r1", "endpoint": f"http://127.0.0.1:{port}"}], http2=H2)
        service = await start_router(config, probe=probe_passes)
        client = await connect_h2(service.proxy_port)
        statuses: list[int] = []

        async def worker(n: int) -> None:
            for _ in range(n):
                statuses.append((await client.request("/delay")).status)

        await client.request("/warm")  # the connection's SETTINGS exchange is done
        started = time.monotonic()
        await asyncio.gather(*(worker(10) for _ in range(100)))
        elapsed = time.monotonic() - started
    finally:
        region.kill()
        await region.wait()
    assert statuses == [200] * 1000
    assert elapsed < 2.0, elapsed


async def test_h2c_through_worker_processes(
    aiohttp_server: AiohttpServer, tmp_path: Path, connect_h2: ConnectH2
) -> None:
    region = await start_region(aiohttp_server, "r1")
    config = {
        "http2": H2,
        "health_check": {"path": "/health", "interval": "300ms", "timeout": "200ms"},
        "regions": [region.config()],
    }
    async with router_process(tmp_path, config, workers=2) as router:
        # New connections, spread over both workers.
        clients = [await connect_h2(router.proxy_port) for _ in range(4)]
        for client in clients:
            responses = await asyncio.gather(*(client.request(f"/w/{i}") for i in range(5)))
            assert [r.status for r in responses] == [200] * 5
            assert all(r.header("x-router-region") == "r1" for r in responses)
