"""Bounded memory: 1 GiB each way through a router subprocess barely moves its RSS."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpServer

from tests.backends import (
    pattern,
    pattern_sha256,
    raw_connection,
    read_head,
    read_response,
    router_process,
    start_region,
)

GIB = 1 << 30
MIB = 1 << 20
RSS_GROWTH_LIMIT = 64 * MIB


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def peak_rss(pid: int) -> AsyncIterator[list[int]]:
    """Sample the process's RSS every 20 ms; the yielded list holds the peak seen."""
    peak = [rss_bytes(pid)]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_bytes(pid))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        peak[0] = max(peak[0], rss_bytes(pid))


@pytest.mark.slow
async def test_gigabyte_upload_and_download_in_bounded_memory(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    region = await start_region(aiohttp_server)
    config = {
        "strategy": "round_robin",
        "health_check": {"path": "/health", "interval": "1s", "timeout": "500ms"},
        "limits": {"max_body": "2GiB"},
        "regions": [region.config()],
    }
    async with (
        router_process(tmp_path, config) as router,
        raw_connection(router.proxy_port) as (reader, writer),
    ):
        # warm up: the first requests allocate what any request needs
        for _ in range(3):
            writer.write(b"POST /warm HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nwarm")
            assert (await read_response(reader)).status == 200
        baseline = rss_bytes(router.pid)

        async with peak_rss(router.pid) as peak:
            writer.write(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % GIB)
            for chunk in pattern(GIB, block=MIB // 4):
                writer.write(chunk)
                await writer.drain()
            seen = (await read_response(reader, timeout_s=60)).json()
            assert seen["body_length"] == GIB
            assert seen["body_sha256"] == pattern_sha256(GIB)

            writer.write(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % GIB)
            head = await read_head(reader)
            assert b"Content-Length: %d" % GIB in head
            digest = hashlib.sha256()
            left = GIB
            async with asyncio.timeout(60):
                while left:
                    data = await reader.read(min(left, MIB))
                    assert data, "body cut short"
                    digest.update(data)
                    left -= len(data)
            assert digest.hexdigest() == pattern_sha256(GIB)

        growth = peak[0] - baseline
        assert growth < RSS_GROWTH_LIMIT, f"router RSS grew by {growth / MIB:.1f} MiB"
