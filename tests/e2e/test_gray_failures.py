"""Gray failures: a region that dies or stops answering under load costs no GET.

Real sockets throughout: the failing region sits behind a loopback relay (tests/faults.py)
that resets every connection (a crash) or stops moving bytes (a blackhole).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pytest_aiohttp import AiohttpServer

from tests.backends import start_region
from tests.cluster import eventually
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


async def test_blackholed_region_requests_are_rescued_when_it_leaves_rotation(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    """Issue 10 defect 6: requests already waiting on a blackholed region hung until their
    connection died (up to timeouts.response_headers), even after the probes had marked
    the region down. Now they are re-sent elsewhere the moment it leaves rotation."""
    gray = await start_region(aiohttp_server, "gray")
    others = [await start_region(aiohttp_server, n) for n in ("steady-a", "steady-b")]
    async with relay_to(gray.port) as relay:
        config = make_config(
            [{"id": "gray", "endpoint": relay.url}, *(r.config() for r in others)],
            strategy="latency",
            health_check={"path": "/health", "interval": "500ms", "timeout": "400ms"},
        )
        service = await start_router(config)
        stop = asyncio.Event()
        result = LoadResult()
        load = asyncio.ensure_future(
            get_load(f"http://127.0.0.1:{service.proxy_port}/r", CLIENTS, stop, result)
        )
        await asyncio.sleep(0.5)
        relay.blackhole()

        async def out_of_rotation() -> bool:
            return not service.runtime.holder.current.by_id["gray"].eligible

        await eventually(out_of_rotation, 5.0, "the blackholed region leaves rotation")
        await asyncio.sleep(0.3)
        stop.set()
        # Without the rescue, requests stuck on the blackhole wait 30 s for their headers.
        await asyncio.wait_for(load, 3.0)
        metrics = await _metrics(service)
    assert result.failed() == [], result.by_status()
    label = 'router_retries_total{reason="region_down"}'
    rescued = [line for line in metrics.splitlines() if label in line]
    assert rescued and float(rescued[0].split()[-1]) >= 1, metrics
    # the requests caught by the blackhole waited for the verdict, then another region answered
    stuck = [a for a in result.answers if a.latency_s > 0.3]
    assert stuck and all(a.region != "gray" for a in stuck), stuck


async def test_manual_failover_rescues_a_waiting_get_but_never_a_post(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    import aiohttp

    primary = await start_region(aiohttp_server, "primary")
    spare = await start_region(aiohttp_server, "spare")
    async with relay_to(primary.port) as relay:
        config = make_config(
            [{"id": "primary", "endpoint": relay.url, "priority": 0}, spare.config(priority=1)],
            strategy="priority",
        )
        service = await start_router(config)
        relay.blackhole()
        base = f"http://127.0.0.1:{service.proxy_port}"
        async with aiohttp.ClientSession() as session:

            async def send(method: str) -> tuple[int, str]:
                async with session.request(method, f"{base}/r", data=b"x") as resp:
                    await resp.read()
                    return resp.status, resp.headers.get("X-Router-Region", "")

            get = asyncio.ensure_future(send("GET"))
            post = asyncio.ensure_future(send("POST"))

            async def both_waiting() -> bool:
                return relay.accepted_after_blackhole + relay.bytes_after_blackhole > 0 and (
                    len(service.runtime.core.awaiting) == 2
                )

            await eventually(both_waiting, 3.0, "GET and POST wait on the blackhole")
            admin = f"http://127.0.0.1:{service.admin_port}/admin/regions/primary/failover"
            async with session.post(admin, json={"reason": "gray"}) as resp:
                assert resp.status < 300
            assert await asyncio.wait_for(get, 2.0) == (200, "spare")
            # A POST may have been served: it is never re-sent, it keeps waiting.
            done, _ = await asyncio.wait([post], timeout=0.5)
            assert not done
            post.cancel()
        assert [s.method for s in spare.seen] == ["GET"]
        metrics = await _metrics(service)
    assert 'router_retries_total{reason="region_down"} 1.0' in metrics
