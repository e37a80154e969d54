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
                return relay.reached_after_blackhole and (len(service.runtime.core.awaiting) == 2)

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


async def test_a_response_that_stalls_mid_body_is_aborted_never_retried_or_spliced(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    """Hedging, per-try and rescue all on: none of them may touch a started response."""
    from tests.backends import probe_passes, raw_connection, read_head, start_raw_region

    spare = await start_region(aiohttp_server, "spare")
    requests = 0

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_head(reader)
        requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100)
        await writer.drain()
        await asyncio.Event().wait()  # the rest never comes

    async with start_raw_region(stall) as stalling:
        config = make_config(
            [{"id": "stall", "endpoint": stalling.url, "priority": 0}, spare.config(priority=1)],
            strategy="priority",
            timeouts={"idle": "1s", "per_try": "200ms"},
            hedging={"enabled": True, "delay": "50ms"},
        )
        service = await start_router(config, probe=probe_passes)
        async with raw_connection(service.proxy_port) as (reader, writer):
            t0 = asyncio.get_running_loop().time()
            writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            head = await read_head(reader)
            assert head.startswith(b"HTTP/1.1 200") and b"X-Router-Region: stall" in head
            body = b""
            async with asyncio.timeout(1.0 + 1.5):  # timeouts.idle plus slack
                while chunk := await reader.read(65536):
                    body += chunk
            took = asyncio.get_running_loop().time() - t0
        assert body == b"a" * 100  # cut off: nothing duplicated, nothing spliced
        assert 1.0 <= took < 2.5
    assert requests == 1 and spare.seen == []


async def test_workers_rescue_their_waiting_requests_on_failover(
    aiohttp_server: AiohttpServer, tmp_path: Any
) -> None:
    """With --workers, each worker rescues its own requests when the new state reaches it."""
    import aiohttp

    from tests.backends import router_process

    primary = await start_region(aiohttp_server, "primary")
    spare = await start_region(aiohttp_server, "spare")
    async with relay_to(primary.port) as relay:
        config = {
            "strategy": "priority",
            "health_check": {"path": "/health", "interval": "300ms", "timeout": "200ms"},
            "regions": [
                {"id": "primary", "endpoint": relay.url, "priority": 0},
                spare.config(priority=1),
            ],
        }
        async with router_process(tmp_path, config, workers=2) as rp, aiohttp.ClientSession() as s:
            relay.blackhole()

            async def get() -> tuple[int, str]:
                # a connection each, so both workers' accept queues get requests
                headers = {"Connection": "close"}
                async with s.get(f"{rp.proxy}/r", headers=headers) as resp:
                    await resp.read()
                    return resp.status, resp.headers.get("X-Router-Region", "")

            gets = [asyncio.ensure_future(get()) for _ in range(6)]

            async def all_waiting() -> bool:
                lines = [line for _, line in relay.arrivals if b" /r " in line]
                return len(lines) == 6

            await eventually(all_waiting, 5.0, "six GETs wait on the blackhole")
            async with s.post(f"{rp.admin}/admin/regions/primary/failover", json={}) as resp:
                assert resp.status < 300
            answers = await asyncio.wait_for(asyncio.gather(*gets), 3.0)
            assert answers == [(200, "spare")] * 6

            async def counted() -> bool:  # workers report their counters within 1 s
                text = await _metrics_at(s, rp.admin)
                return 'router_retries_total{reason="region_down"} 6.0' in text

            await eventually(counted, 3.0, "six rescues counted")


async def _metrics_at(session: Any, admin: str) -> str:
    async with session.get(f"{admin}/metrics") as resp:
        text: str = await resp.text()
        return text
