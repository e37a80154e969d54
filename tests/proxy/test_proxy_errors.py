"""Requests the router answers itself: malformed input, limits, and upstream failures."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Iterator

import aiohttp
import orjson
import pytest
from pytest_aiohttp import AiohttpServer

from tests.backends import (
    RawResponse,
    closed_by_peer,
    free_port,
    probe_never_answers,
    probe_passes,
    raw_connection,
    raw_exchange,
    read_head,
    read_response,
    region_behind_router,
    start_raw_region,
    start_region,
)
from tests.conftest import StartRouter, make_config


def assert_router_error(resp: RawResponse, status: int, code: str) -> None:
    assert resp.status == status, resp.body
    assert resp.header("X-Router-Error") == code
    assert resp.header("Content-Type") == "application/json"
    error = orjson.loads(resp.body)["error"]
    assert error["code"] == code
    assert error["message"]


MALFORMED = {
    "garbage request line": b"GARBAGE\r\n\r\n",
    "no version": b"GET /\r\n\r\n",
    "HTTP/2.0 over HTTP/1": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "CL and TE (smuggling)": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "TE other than chunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ),
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n  folded\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare LF in a header": b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
    "bare CR": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
    "invalid chunk size": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    ),
    "duplicate differing Content-Length": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
    ),
    "signed Content-Length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    "missing Host on HTTP/1.1": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "two Host headers": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "path above the root": b"GET /../x HTTP/1.1\r\nHost: a\r\n\r\n",
    "path above the root, deeper": b"GET /a/../../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n",
    "path above the root, encoded": b"GET /%2e%2E/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "CONNECT": b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    "userinfo in absolute form": b"GET http://u@a/x HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.fixture(params=list(MALFORMED), ids=list(MALFORMED))
def malformed(request: pytest.FixtureRequest) -> Iterator[bytes]:
    yield MALFORMED[request.param]


async def test_malformed_requests_get_400_and_never_reach_the_region(
    aiohttp_server: AiohttpServer, start_router: StartRouter, malformed: bytes
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    async with raw_connection(port) as (reader, writer):
        writer.write(malformed)
        resp = await read_response(reader)
        assert_router_error(resp, 400, "bad_request")
        assert resp.header("Connection") == "close"
        assert await closed_by_peer(reader)
    assert region.seen == []


async def test_absolute_form_naming_another_host_is_never_followed(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    async def elsewhere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npwned!")

    region, port = await region_behind_router(aiohttp_server, start_router)
    async with start_raw_region(elsewhere) as other:
        target = f"http://127.0.0.1:{other.port}/steal"
        for host in ("a", f"127.0.0.1:{region.port}"):
            resp = await raw_exchange(
                port, f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            )
            assert_router_error(resp, 400, "bad_request")
        assert other.connections == 0
    assert region.seen == []
    # absolute form naming the Host the client addressed is served, from the region
    resp = await raw_exchange(
        port, b"GET HTTP://Front.Example/p?q HTTP/1.1\r\nHost: front.example\r\n\r\n"
    )
    assert resp.status == 200
    assert resp.json()["raw_path"] == "/p?q"


async def test_body_limits_answer_413(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(
        aiohttp_server, start_router, limits={"max_body": "64KiB"}
    )
    resp = await raw_exchange(
        port, b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n"
    )
    assert_router_error(resp, 413, "body_too_large")
    # with Expect: 100-continue the client hears 413 instead of 100 and never sends it
    resp = await raw_exchange(
        port,
        b"PUT /big HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 65537\r\n\r\n",
    )
    assert_router_error(resp, 413, "body_too_large")
    assert region.seen == []
    # exactly the limit is fine
    resp = await raw_exchange(
        port, b"POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n" + b"x" * 65536
    )
    assert resp.status == 200
    # a chunked body that grows past the limit
    async with raw_connection(port) as (reader, writer):
        writer.write(b"POST /grow HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%b\r\n" % (10_000, b"y" * 10_000)
        for _ in range(7):
            writer.write(chunk)
        resp = await read_response(reader)
        assert_router_error(resp, 413, "body_too_large")
        assert await closed_by_peer(reader)


async def test_oversized_heads_answer_431(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(
        aiohttp_server, start_router, limits={"max_header_bytes": "4KiB"}
    )
    many = b"".join(b"X-H%d: %b\r\n" % (i, b"v" * 50) for i in range(100))
    resp = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n")
    assert_router_error(resp, 431, "headers_too_large")
    resp = await raw_exchange(port, b"GET /" + b"u" * 5000 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert_router_error(resp, 431, "headers_too_large")
    # one header line that never ends, sent in pieces: refused without waiting for its end
    async with raw_connection(port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\nX-Endless: ")
        for _ in range(20):
            writer.write(b"z" * 1000)
            await writer.drain()
            if reader.at_eof() or len(reader._buffer):  # type: ignore[attr-defined]  # peek
                break
            await asyncio.sleep(0.01)
        resp = await read_response(reader)
        assert_router_error(resp, 431, "headers_too_large")
    # just under the limit passes
    resp = await raw_exchange(
        port, b"GET / HTTP/1.1\r\nHost: a\r\nX-A: " + b"v" * 3000 + b"\r\n\r\n"
    )
    assert resp.status == 200
    assert len(region.seen) == 1


async def test_no_eligible_region_is_503_with_retry_after(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region = await start_region(aiohttp_server)
    # A region that has never passed a probe is not eligible (and not a reason for panic).
    service = await start_router(
        make_config([region.config()]), wait_ready=False, probe=probe_never_answers
    )
    resp = await raw_exchange(service.proxy_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert_router_error(resp, 503, "no_eligible_region")
    retry_after = resp.header("Retry-After")
    assert retry_after is not None
    assert int(retry_after) >= 1
    assert resp.header("X-Request-ID")
    assert region.seen == []


async def test_region_failed_over_by_the_operator_is_503(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region = await start_region(aiohttp_server)
    service = await start_router(make_config([region.config()]))
    async with aiohttp.ClientSession() as session:
        admin = f"http://127.0.0.1:{service.admin_port}"
        async with session.post(f"{admin}/admin/regions/r1/failover", json={}) as answer:
            assert answer.status < 300, await answer.text()
    resp = await raw_exchange(service.proxy_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert_router_error(resp, 503, "no_eligible_region")
    assert int(resp.header("Retry-After") or 0) >= 1
    assert region.seen == []


async def test_unreachable_region_is_502_after_retries(start_router: StartRouter) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    service = await start_router(
        make_config(
            [{"id": "a", "endpoint": dead}, {"id": "b", "endpoint": dead + "/b"}],
            retries={"max_retries": 2, "backoff_base": "1ms", "backoff_max": "5ms"},
        ),
        probe=probe_passes,  # both stay eligible: the proxy path meets the refusals
    )
    resp = await raw_exchange(
        service.proxy_port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
    )
    assert_router_error(resp, 502, "upstream_unreachable")


class _ResetOnAccept(asyncio.Protocol):
    """A region that accepts a connection and resets it at once (RST, no bytes)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


async def test_region_that_resets_on_accept_is_retried_elsewhere_not_hung(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    loop = asyncio.get_running_loop()
    resetter = await loop.create_server(_ResetOnAccept, "127.0.0.1", 0)
    reset_url = f"http://127.0.0.1:{resetter.sockets[0].getsockname()[1]}"
    good = await start_region(aiohttp_server)
    try:
        alone = await start_router(
            make_config([{"id": "a", "endpoint": reset_url}]), probe=probe_passes
        )
        resp = await asyncio.wait_for(
            raw_exchange(alone.proxy_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 5
        )
        assert_router_error(resp, 502, "upstream_unreachable")
        pair = await start_router(
            make_config([{"id": "a", "endpoint": reset_url}, {"id": "b", "endpoint": good.url}]),
            probe=probe_passes,
        )
        for _ in range(6):  # round robin meets the resetting region on every other request
            resp = await asyncio.wait_for(
                raw_exchange(
                    pair.proxy_port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
                ),
                5,
            )
            assert resp.status == 200
            assert resp.header("X-Router-Region") == "b"
    finally:
        resetter.close()


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A loopback port whose accept queue is full: new connections hang in SYN-SENT."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    try:
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_connect_timeout_is_502(start_router: StartRouter, blackhole: int) -> None:
    service = await start_router(
        make_config(
            [{"id": "hole", "endpoint": f"http://127.0.0.1:{blackhole}"}],
            timeouts={"connect": "200ms"},
            retries={"max_retries": 0},
        )
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await raw_exchange(service.proxy_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert_router_error(resp, 502, "upstream_unreachable")
    assert 0.15 < loop.time() - started < 5


async def test_response_headers_timeout_is_504_and_cancels_upstream(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(
        aiohttp_server,
        start_router,
        timeouts={"response_headers": "300ms"},
        retries={"max_retries": 0},
    )
    resp = await raw_exchange(port, b"GET /delay/30 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert_router_error(resp, 504, "upstream_timeout")
    async with asyncio.timeout(5):
        await region.cancelled.wait()


async def test_idle_client_connections_are_closed(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    _, port = await region_behind_router(aiohttp_server, start_router, timeouts={"idle": "300ms"})
    async with raw_connection(port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(reader)).status == 200
        assert await closed_by_peer(reader, timeout_s=5)
    async with raw_connection(port) as (reader, _):  # never sends a byte
        assert await closed_by_peer(reader, timeout_s=5)
    async with raw_connection(port) as (reader, writer):  # a head that stalls
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
        assert await closed_by_peer(reader, timeout_s=5)


async def test_slow_upload_is_not_a_response_headers_timeout(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    """The response-headers clock starts once the request body has been sent."""
    _, port = await region_behind_router(
        aiohttp_server,
        start_router,
        timeouts={"response_headers": "300ms", "idle": "5s"},
        retries={"max_retries": 0},
    )
    async with raw_connection(port) as (reader, writer):
        writer.write(b"PUT /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n")
        for piece in (b"ab", b"cd", b"ef"):
            await asyncio.sleep(0.25)  # the upload itself outlasts the timeout
            writer.write(piece)
        resp = await read_response(reader)
        assert resp.status == 200
        assert resp.json()["body_length"] == 6


async def test_client_that_stops_reading_is_cut_off_after_idle(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(
        aiohttp_server, start_router, timeouts={"idle": "300ms"}
    )
    size = 256 * 1024 * 1024
    async with raw_connection(port) as (reader, writer):
        writer.write(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
        async with asyncio.timeout(10):
            await region.cancelled.wait()  # the router gave up on us and on the download
        received = 0
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(1 << 20):
                received += len(chunk)
        assert received < size


async def test_region_that_stalls_mid_body_is_cut_off_after_idle(
    start_router: StartRouter,
) -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nfirst bytes")
        await reader.read()  # then nothing, until the router hangs up

    async with start_raw_region(stalls) as region:
        service = await start_router(
            make_config([{"id": "r1", "endpoint": region.url}], timeouts={"idle": "300ms"})
        )
        async with raw_connection(service.proxy_port) as (reader, writer):
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            head = await read_head(reader)
            assert b"Content-Length: 1000" in head
            async with asyncio.timeout(5):
                with contextlib.suppress(ConnectionError):
                    assert await reader.read() == b"first bytes"


async def test_pipelined_bad_request_is_answered_in_turn(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    async with raw_connection(port) as (reader, writer):
        writer.write(
            b"GET /delay/0.2 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /queued HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /../bad HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /never HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        assert (await read_response(reader)).json()["raw_path"] == "/delay/0.2"
        assert (await read_response(reader)).json()["raw_path"] == "/queued"
        assert_router_error(await read_response(reader), 400, "bad_request")
        assert await closed_by_peer(reader)
    assert [s.raw_path for s in region.seen] == ["/delay/0.2", "/queued"]


async def test_client_disconnect_cancels_the_upstream_request(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region, port = await region_behind_router(aiohttp_server, start_router)
    async with raw_connection(port) as (_, writer):
        writer.write(b"GET /delay/30 HTTP/1.1\r\nHost: a\r\n\r\n")
        async with asyncio.timeout(5):
            await region.arrived.wait()
    async with asyncio.timeout(5):
        await region.cancelled.wait()
