"""Gray failures: a region that dies or stops answering under load costs no GET.

Real sockets throughout: the failing region sits behind a loopback relay (tests/faults.py)
that resets every connection (a crash) or stops moving bytes (a blackhole).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pytest_aiohttp import AiohttpServer

from tests.backends import start_region
from tests.conftest import StartRouter, make_config
from tests.faults import LoadResult, get_load, relay_to

CLIENTS = 20


async def _metrics(service: Any) -> str:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{service.admin_port}/metrics") as resp,
    ):
        return await resp.text()


async def test_priority_failover_under_load_loses_no_get(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    """Issue 10 defect 5: killing the tier-0 region under load answered some GETs 502.

    A reset on a reused pooled connection was retried on the same (dead, still in
    rotation) region and spent the request's only retry on the refused connect.
    """
    primary = await start_region(aiohttp_server, "primary")
    spare_a = await start_region(aiohttp_server, "spare-a")
    spare_b = await start_region(aiohttp_server, "spare-b")
    async with relay_to(primary.port) as relay:
        config = make_config(
            [
                {"id": "primary", "endpoint": relay.url, "priority": 0},
                spare_a.config(priority=1),
                spare_b.config(priority=1),
            ],
            strategy="priority",
            retries={"max_retries": 1, "budget_percent": "100%"},
        )
        service = await start_router(config)
        stop = asyncio.Event()
        result = LoadResult()
        load = asyncio.ensure_future(
            get_load(f"http://127.0.0.1:{service.proxy_port}/r", CLIENTS, stop, result)
        )
        await asyncio.sleep(0.5)  # load, to fill the pool with reused connections
        await relay.kill()
        await asyncio.sleep(1.0)
        stop.set()
        await load
    assert result.failed() == [], result.by_status()
    regions = {a.region for a in result.answers}
    assert {"primary", "spare-a", "spare-b"} <= regions
    assert len(result.answers) > 200
