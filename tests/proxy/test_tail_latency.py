"""Tail latency: timeouts.per_try and hedged requests, over real sockets.

The slow region sits behind a blackhole relay (tests/faults.py) and the health probe is
pinned to "up" (``probe_passes``), so only the per-try timer or a hedge can save a request.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from router.proxy.hedging import Hedges
from router.service import RouterService
from tests.backends import Region, probe_passes, start_region
from tests.conftest import StartRouter, make_config
from tests.faults import Relay, relay_to

HEDGE_50MS = {"enabled": True, "delay": "50ms"}

Relays = Callable[[int], Awaitable[Relay]]
StartPair = Callable[..., Awaitable[tuple[Relay, Region, Region, RouterService]]]


@pytest.fixture
async def relays(start_router: StartRouter) -> AsyncIterator[Relays]:
    """``await relays(port)``: a relay to ``port`` (tests/faults.py), closed when the test
    ends, before the routers stop (this fixture needs start_router)."""
    async with AsyncExitStack() as stack:

        async def start(port: int) -> Relay:
            return await stack.enter_async_context(relay_to(port))

        yield start


@pytest.fixture
def primary_and_spare(
    aiohttp_server: AiohttpServer, start_router: StartRouter, relays: Relays
) -> StartPair:
    """``relay, primary, spare, service = await primary_and_spare(**sections)``: ``primary``
    (priority 0, behind ``relay``) takes every first try; ``spare`` the rest."""

    async def start(**sections: Any) -> tuple[Relay, Region, Region, RouterService]:
        primary = await start_region(aiohttp_server, "primary")
        spare = await start_region(aiohttp_server, "spare")
        relay = await relays(primary.port)
        config = make_config(
            [{"id": "primary", "endpoint": relay.url, "priority": 0}, spare.config(priority=1)],
            strategy="priority",
            outlier_detection={"consecutive_failures": 1000},
            **sections,
        )
        return relay, primary, spare, await start_router(config, probe=probe_passes)

    return start


async def _send(
    session: aiohttp.ClientSession, service: RouterService, path: str = "/r", method: str = "GET"
) -> tuple[int, str, float]:
    t0 = time.monotonic()
    url = f"http://127.0.0.1:{service.proxy_port}{path}"
    async with session.request(method, url, data=b"x" if method == "POST" else None) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Router-Region", ""), time.monotonic() - t0


async def _counter(service: RouterService, name: str, label: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{service.admin_port}/metrics") as resp,
    ):
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{label}}} "):
            return float(line.split()[-1])
    return 0.0


async def test_per_try_timeout_retries_a_silent_try_elsewhere(primary_and_spare: StartPair) -> None:
    relay, _, spare, service = await primary_and_spare(timeouts={"per_try": "200ms"})
    relay.blackhole()
    async with aiohttp.ClientSession() as session:
        status, region, took = await _send(session, service)
        assert (status, region) == (200, "spare")
        assert 0.2 <= took < 2.0
        # A POST may have been served: its try is never abandoned, it keeps waiting.
        post = asyncio.ensure_future(_send(session, service, method="POST"))
        done, _ = await asyncio.wait([post], timeout=0.6)
        assert not done
        post.cancel()
    assert relay.reached_after_blackhole  # the GET's first try did reach the relay
    assert [s.method for s in spare.seen] == ["GET"]
    assert await _counter(service, "router_retries_total", 'reason="per_try_timeout"') == 1


async def test_hedge_wins_against_a_silent_region(primary_and_spare: StartPair) -> None:
    relay, _, spare, service = await primary_and_spare(hedging=HEDGE_50MS)
    relay.blackhole()
    async with aiohttp.ClientSession() as session:
        status, region, took = await _send(session, service)
    assert (status, region) == (200, "spare")
    assert 0.05 <= took < 1.0
    assert len(spare.seen) == 1
    assert relay.reached_after_blackhole
    assert await _counter(service, "router_hedges_total", 'outcome="won"') == 1
    core = service.runtime.core
    assert (core.hedges_active, core.inflight, len(core.awaiting)) == (0, 0, 0)


async def test_first_response_wins_and_the_slower_copy_is_closed(
    primary_and_spare: StartPair,
) -> None:
    # The primary answers after 0.5 s; the hedge, sent at 0.1 s, would answer at 0.6 s.
    _, primary, spare, service = await primary_and_spare(
        hedging={"enabled": True, "delay": "100ms"}
    )
    async with aiohttp.ClientSession() as session:
        status, region, _took = await _send(session, service, "/delay/0.5")
    assert (status, region) == (200, "primary")
    async with asyncio.timeout(5):
        await spare.cancelled.wait()  # the losing copy's connection was closed
    assert await _counter(service, "router_hedges_total", 'outcome="lost"') == 1
    assert await _counter(service, "router_hedges_total", 'outcome="won"') == 0
    assert [s.raw_path for s in primary.seen] == ["/delay/0.5"]


async def test_hedges_stay_within_their_budget(primary_and_spare: StartPair) -> None:
    """Two requests stuck at once, a budget of one hedge: the second waits for the first's."""
    relay, _, spare, service = await primary_and_spare(hedging=HEDGE_50MS)
    relay.blackhole()
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(
            _send(session, service, "/delay/0.3"), _send(session, service, "/delay/0.3")
        )
    assert [(s, r) for s, r, _ in answers] == [(200, "spare"), (200, "spare")]
    assert len(spare.seen) == 2
    slower = max(t for _, _, t in answers)
    assert slower >= 0.6  # the second hedge left only once the first one finished
    assert await _counter(service, "router_hedges_total", 'outcome="skipped_budget"') == 1
    assert await _counter(service, "router_hedges_total", 'outcome="won"') == 2


async def test_auto_delay_follows_the_regions_p95_and_admin_route_explains_it(
    primary_and_spare: StartPair,
) -> None:
    relay, _, _spare, service = await primary_and_spare(hedging={"enabled": True})
    async with aiohttp.ClientSession() as session:
        for _ in range(40):  # enough samples for a p95
            assert (await _send(session, service))[:2] == (200, "primary")
        service.runtime.core.sweep()  # refresh the estimate now, not within 100 ms
        admin = f"http://127.0.0.1:{service.admin_port}/admin/route?method=GET&path=/r"
        async with session.get(admin) as resp:
            hedging = (await resp.json())["hedging"]
        assert hedging["applies"] is True, hedging
        assert "p95 of recent responses" in hedging["why"]
        assert 2.0 <= hedging["delay_ms"] < 100.0
        async with session.get(admin.replace("GET", "POST")) as resp:
            assert (await resp.json())["hedging"]["applies"] is False
        relay.blackhole()
        status, region, took = await _send(session, service)
    assert (status, region) == (200, "spare")
    assert took < 0.5


async def test_a_failed_try_hands_the_request_to_its_waiting_hedge(
    primary_and_spare: StartPair,
) -> None:
    relay, _, spare, service = await primary_and_spare(hedging=HEDGE_50MS)
    relay.blackhole()
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(_send(session, service, "/delay/0.5"))
        async with asyncio.timeout(5):
            await spare.arrived.wait()  # the hedge is waiting on the spare
        await relay.kill()  # the first try is reset
        status, region, _ = await request
    assert (status, region) == (200, "spare")
    assert len(spare.seen) == 1  # handed over, not retried: one copy only
    assert await _counter(service, "router_retries_total", 'reason="reset"') == 1
    assert await _counter(service, "router_hedges_total", 'outcome="won"') == 1


async def test_with_per_try_response_headers_bounds_the_whole_request(
    aiohttp_server: AiohttpServer, start_router: StartRouter, relays: Relays
) -> None:
    """Both regions silent: per-try retries go on only until timeouts.response_headers."""
    relay_a = await relays((await start_region(aiohttp_server, "a")).port)
    relay_b = await relays((await start_region(aiohttp_server, "b")).port)
    config = make_config(
        [{"id": "a", "endpoint": relay_a.url}, {"id": "b", "endpoint": relay_b.url}],
        outlier_detection={"consecutive_failures": 1000},
        timeouts={"per_try": "150ms", "response_headers": "1s"},
        retries={"max_retries": 10},
    )
    service = await start_router(config, probe=probe_passes)
    relay_a.blackhole()
    relay_b.blackhole()
    async with aiohttp.ClientSession() as session:
        status, _, took = await _send(session, service)
    assert status == 504
    assert 1.0 <= took < 1.6  # eleven tries of 150 ms, plus backoff, would take longer
    assert await _counter(service, "router_retries_total", 'reason="per_try_timeout"') >= 3


async def test_a_region_that_loses_every_race_is_ejected_and_the_winner_unharmed(
    aiohttp_server: AiohttpServer, start_router: StartRouter, relays: Relays
) -> None:
    """The lost race that ejects the region is reported while the request moves to its
    hedge: the ejection's rescue must not find the request half-moved."""
    primary = await start_region(aiohttp_server, "primary")
    spare = await start_region(aiohttp_server, "spare")
    third = await start_region(aiohttp_server, "third")
    relay = await relays(primary.port)
    config = make_config(
        [
            {"id": "primary", "endpoint": relay.url, "priority": 0},
            spare.config(priority=1),
            third.config(priority=1),
        ],
        strategy="priority",
        outlier_detection={"consecutive_failures": 2},
        hedging=HEDGE_50MS,
    )
    service = await start_router(config, probe=probe_passes)
    relay.blackhole()
    async with aiohttp.ClientSession() as session, asyncio.timeout(10):
        first = await _send(session, service)
        second = await _send(session, service)  # its lost race ejects "primary"
        third_answer = await _send(session, service)  # no first try on "primary" now
    assert [a[:2][0] for a in (first, second, third_answer)] == [200, 200, 200]
    assert third_answer[2] < 0.05  # not hedged: it went to a region in rotation
    state = service.runtime.holder.current.by_id["primary"].state
    assert state.value == "ejected"
    core = service.runtime.core
    assert (core.hedges_active, core.inflight, len(core.awaiting)) == (0, 0, 0)
    assert await _counter(service, "router_hedges_total", 'outcome="won"') == 2


async def test_http2_streams_are_hedged_like_http11_requests(primary_and_spare: StartPair) -> None:
    from tests.h2client import H2Client

    relay, _, spare, service = await primary_and_spare(http2={"enabled": True}, hedging=HEDGE_50MS)
    relay.blackhole()
    client = H2Client()
    await client.connect(service.proxy_port)
    try:
        answers = await asyncio.gather(*(client.request(f"/s{i}") for i in range(3)))
    finally:
        await client.close()
    assert [(r.status, r.header("x-router-region")) for r in answers] == [(200, "spare")] * 3
    assert sorted(s.raw_path for s in spare.seen) == ["/s0", "/s1", "/s2"]
    assert await _counter(service, "router_hedges_total", 'outcome="won"') == 3
    core = service.runtime.core
    assert (core.hedges_active, core.inflight) == (0, 0)


async def test_a_hedge_carries_the_whole_chunked_body(primary_and_spare: StartPair) -> None:
    """The copy re-sends the buffered body in the request's own (chunked) framing, ended."""
    body = [b"part-one,", b"part-two,", b"part-three"]

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in body:
            yield chunk

    relay, _, spare, service = await primary_and_spare(hedging=HEDGE_50MS)
    relay.blackhole()
    url = f"http://127.0.0.1:{service.proxy_port}/upload"
    async with (
        aiohttp.ClientSession() as session,
        session.put(url, data=chunks()) as resp,  # no length: aiohttp sends it chunked
    ):
        assert resp.status == 200
        assert resp.headers["X-Router-Region"] == "spare"
        seen = await resp.json()
    assert seen["method"] == "PUT"
    assert seen["body_length"] == len(b"".join(body))
    assert seen["body_sha256"] == hashlib.sha256(b"".join(body)).hexdigest()
    assert len(spare.seen) == 1
    assert await _counter(service, "router_hedges_total", 'outcome="won"') == 1


async def test_an_exchange_with_hedging_on_leaves_no_reference_cycle(
    primary_and_spare: StartPair,
) -> None:
    """Each exchange's ``Hedges`` points back at it; a finished exchange drops its hedges,
    so both go by reference counting, not by waiting for the cyclic GC."""
    hedging = {"enabled": True, "delay": "5s"}  # armed on every request, never sent
    _, _, _, service = await primary_and_spare(hedging=hedging)
    async with aiohttp.ClientSession() as session:
        assert (await _send(session, service))[0] == 200
        gc.collect()
        gc.disable()
        try:
            for _ in range(20):
                assert (await _send(session, service))[0] == 200
            alive = sum(isinstance(o, Hedges) for o in gc.get_objects())
        finally:
            gc.enable()
        assert alive == 0
