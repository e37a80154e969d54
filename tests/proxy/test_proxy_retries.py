"""Retries: to another region, only when safe, and never silently skipped."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp
from pytest_aiohttp import AiohttpServer

from router.service import RouterService
from tests.backends import (
    Region,
    free_port,
    probe_passes,
    raw_exchange,
    read_head,
    start_raw_region,
    start_region,
)
from tests.conftest import StartRouter, make_config

BODY = b"payload-" * 1000
BODY_SHA = hashlib.sha256(BODY).hexdigest()


def _sections(**extra: Any) -> dict[str, Any]:
    """Strict active/passive: every first attempt goes to the priority-0 region."""
    return {
        "strategy": "priority",
        "retries": {"max_retries": 2, "backoff_base": "1ms", "backoff_max": "5ms"},
        "outlier_detection": {"consecutive_failures": 1000},
        **extra,
    }


async def _pair(
    aiohttp_server: AiohttpServer, start_router: StartRouter, **extra: Any
) -> tuple[Region, Region, RouterService]:
    first = await start_region(aiohttp_server, "first")
    second = await start_region(aiohttp_server, "second")
    config = make_config(
        [first.config(priority=0), second.config(priority=1)], **_sections(**extra)
    )
    return first, second, await start_router(config)


async def _send(
    service: RouterService, method: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> aiohttp.ClientResponse:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"http://127.0.0.1:{service.proxy_port}/r", data=body, headers=headers
        ) as resp,
    ):
        await resp.read()
        return resp


async def test_reset_and_503_are_retried_on_another_region(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    first, second, service = await _pair(aiohttp_server, start_router)
    first.reset_requests = True
    resp = await _send(service, "GET")
    assert (resp.status, resp.headers["X-Router-Region"]) == (200, "second")
    first.reset_requests = False
    first.fail_status = 503
    resp = await _send(service, "PUT", BODY)  # idempotent, body within buffer_body_max
    assert (resp.status, resp.headers["X-Router-Region"]) == (200, "second")
    assert [s.method for s in first.seen] == ["GET", "PUT"]
    assert [(s.method, s.body_sha256) for s in second.seen][-1] == ("PUT", BODY_SHA)


async def test_post_that_reached_a_region_is_not_retried(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    first, second, service = await _pair(aiohttp_server, start_router)
    first.reset_requests = True
    resp = await _send(service, "POST", BODY)
    assert resp.status == 502
    assert resp.headers["X-Router-Error"] == "upstream_unreachable"
    assert second.seen == []
    # ... unless the client says it is safe to repeat
    resp = await _send(service, "POST", BODY, {"Idempotency-Key": "k1"})
    assert (resp.status, resp.headers["X-Router-Region"]) == (200, "second")
    assert second.seen[0].body_sha256 == BODY_SHA


async def test_retry_skipped_for_a_large_body_is_counted(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    first, second, service = await _pair(
        aiohttp_server,
        start_router,
        retries={"max_retries": 2, "buffer_body_max": "1KiB", "backoff_base": "1ms"},
    )
    first.fail_status = 503
    resp = await _send(service, "PUT", BODY)
    assert resp.status == 503  # the region's own answer, passed through
    assert second.seen == []
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{service.admin_port}/metrics") as metrics,
    ):
        text = await metrics.text()
    assert 'router_retries_total{reason="skipped_body_too_large"} 1.0' in text


async def test_connect_failure_is_retried_even_for_post_with_body(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    second = await start_region(aiohttp_server, "second")
    dead = {"id": "dead", "endpoint": f"http://127.0.0.1:{free_port()}", "priority": 0}
    config = make_config([dead, second.config(priority=1)], **_sections())
    service = await start_router(config, probe=probe_passes)  # "dead" looks healthy
    for _ in range(3):
        resp = await _send(service, "POST", BODY)
        assert (resp.status, resp.headers["X-Router-Region"]) == (200, "second")
    assert [s.body_sha256 for s in second.seen] == [BODY_SHA] * 3


async def test_stale_pooled_connection_is_retried_transparently(
    start_router: StartRouter,
) -> None:
    """A region that drops a kept-alive connection just as it is reused costs no error."""

    async def one_answer_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_head(reader)  # the reused connection's request: dropped unanswered

    async with start_raw_region(one_answer_per_connection) as region:
        service = await start_router(
            make_config([{"id": "r1", "endpoint": region.url}], retries={"max_retries": 1})
        )
        for _ in range(4):
            resp = await raw_exchange(service.proxy_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (resp.status, resp.body) == (200, b"ok")
        assert region.connections >= 4
