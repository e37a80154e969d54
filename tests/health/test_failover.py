"""Failover end to end: fault injection on real loopback regions under real load.

Each region is a small aiohttp server that can be told to fail (status), slow down
(delay), reset connections, fail or flap its health check, or die outright. Health
timing is observed by polling with deadlines, never by sleeping for an interval.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from router.service import RouterService
from router.state.snapshot import RegionState
from tests.conftest import StartRouter, make_config

H, R, E, U = (
    RegionState.HEALTHY,
    RegionState.RECOVERING,
    RegionState.EJECTED,
    RegionState.UNHEALTHY,
)
INTERVAL_S, TIMEOUT_S = 0.2, 0.15
FAST_HC = {
    "interval": "200ms",
    "timeout": "150ms",
    "healthy_threshold": 2,
    "unhealthy_threshold": 3,
}


class FaultRegion:
    """A region whose behaviour a test switches at will."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.status = 200  # answer to every non-health request
        self.delay_s = 0.0
        self.retry_after: str | None = None
        self.reset_next = 0  # abort this many requests without answering
        self.health_status = 200
        self.health_flap = False  # alternate pass / fail on every probe
        self.hits = 0
        self.probes = 0
        self._runner: web.AppRunner | None = None

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"id": self.name, "endpoint": f"http://127.0.0.1:{self.port}", **extra}

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]

    async def kill(self) -> None:
        """Stop listening and drop every connection, in-flight requests included."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        self.probes += 1
        status = (200 if self.probes % 2 else 503) if self.health_flap else self.health_status
        return web.Response(status=status, text="ok" if status == 200 else "down")

    async def _serve(self, request: web.Request) -> web.Response:
        self.hits += 1
        body = await request.read()
        if self.reset_next > 0:
            self.reset_next -= 1
            assert request.transport is not None
            request.transport.abort()
            await asyncio.Event().wait()  # cancelled as the connection goes
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        return web.Response(status=self.status, body=body or self.name.encode(), headers=headers)


MakeRegions = Callable[..., Awaitable[list[FaultRegion]]]


@pytest.fixture
async def regions() -> AsyncIterator[MakeRegions]:
    made: list[FaultRegion] = []

    async def make(*names: str) -> list[FaultRegion]:
        out = []
        for name in names:
            r = FaultRegion(name)
            await r.start()
            made.append(r)
            out.append(r)
        return out

    yield make
    for r in made:
        await r.kill()


@dataclass(frozen=True, slots=True)
class Outcome:
    started: float
    status: int
    region: str | None


async def drive(
    url: str,
    stop: asyncio.Event,
    *,
    concurrency: int = 6,
    method: str = "GET",
    timeout_s: float = 5.0,
) -> list[Outcome]:
    """Closed-loop load: ``concurrency`` clients send requests until ``stop`` is set."""
    out: list[Outcome] = []
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with session.request(method, url) as resp:
                    await resp.read()
                    out.append(Outcome(started, resp.status, resp.headers.get("X-Router-Region")))
            except (aiohttp.ClientError, TimeoutError):
                out.append(Outcome(started, 0, None))

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return out


async def wait_until(pred: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``pred`` every 10 ms; return the seconds it took, fail after ``timeout_s``."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def state(service: RouterService, region_id: str) -> RegionState:
    return service.runtime.holder.current.by_id[region_id].state


async def get(
    session: aiohttp.ClientSession, service: RouterService, path: str = "/x", **kw: Any
) -> tuple[int, str | None, aiohttp.ClientResponse]:
    method = kw.pop("method", "GET")
    url = f"http://127.0.0.1:{service.proxy_port}{path}"
    async with session.request(method, url, **kw) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Router-Region"), resp


async def metrics(service: RouterService) -> dict[str, float]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{service.admin_port}/metrics") as resp,
    ):
        text = await resp.text()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# -- failover ------------------------------------------------------------------------------


async def test_killed_region_under_load_no_failures_and_marked_down_in_time(
    regions: MakeRegions, start_router: StartRouter
) -> None:
    a, b, c = await regions("a", "b", "c")
    service = await start_router(
        make_config([a.config(), b.config(), c.config()], health_check=FAST_HC)
    )
    stop = asyncio.Event()
    load = asyncio.create_task(drive(f"http://127.0.0.1:{service.proxy_port}/x", stop))
    await wait_until(lambda: b.hits >= 50, 5, "traffic on b")
    killed_at = time.monotonic()
    await b.kill()
    took = await wait_until(lambda: state(service, "b") is U, 5, "b marked unhealthy")
    served_after = a.hits + c.hits
    await wait_until(lambda: a.hits + c.hits >= served_after + 300, 5, "more traffic")
    stop.set()
    outcomes = await load
    assert [o for o in outcomes if o.status != 200] == []
    assert len(outcomes) > 500
    assert not any(o.region == "b" for o in outcomes if o.started > killed_at + took)
    # unhealthy_threshold x interval + timeout
    assert time.monotonic() - killed_at >= took
    assert took <= 3 * INTERVAL_S + TIMEOUT_S, took

    history = [t for t in service.runtime.registry.history if t.region == "b"]
    assert history[-1].to_state is U and history[-1].reason.startswith("probe failed 3x")
    m = await metrics(service)
    assert m['router_region_up{region="b"}'] == 0.0
    assert m['router_region_up{region="a"}'] == 1.0
    assert m['router_region_state{region="b",state="unhealthy"}'] == 1.0
    assert m['router_health_checks_total{region="b",result="failure"}'] >= 3
    failovers = [k for k in m if k.startswith("router_failovers_total") and 'region="b"' in k]
    assert failovers and all(m[k] >= 1 for k in failovers)
    assert m['router_region_latency_seconds{region="a"}'] > 0
    assert 'router_region_inflight{region="a"}' in m


async def test_fast_503_region_is_avoided_by_latency(
    regions: MakeRegions, start_router: StartRouter
) -> None:
    a, b, c = await regions("a", "b", "c")
    b.status = 503  # fails fast; its health check still passes
    clients = 6
    service = await start_router(
        make_config(
            [a.config(), b.config(), c.config()],
            strategy="latency",
            health_check=FAST_HC,
            outlier_detection={"consecutive_failures": 10000},  # latency alone must do it
            # Not the retry budget's test: each time b's penalty decays, several of the six
            # clients can pick it in one loop turn, and past the default budget (3 retries
            # in flight) a 503 would rightly reach the client.
            retries={"min_concurrent": clients},
        )
    )
    stop = asyncio.Event()
    url = f"http://127.0.0.1:{service.proxy_port}/x"
    load = asyncio.create_task(drive(url, stop, concurrency=clients))
    await wait_until(lambda: a.hits + c.hits >= 600, 10, "traffic")
    stop.set()
    outcomes = await load
    statuses = Counter(o.status for o in outcomes)
    assert statuses.keys() == {200}, statuses  # the few 503s were retried elsewhere
    assert b.hits <= 0.02 * len(outcomes), (b.hits, len(outcomes))
    assert state(service, "b") is H


async def test_slowed_region_loses_its_traffic_within_seconds(
    regions: MakeRegions, start_router: StartRouter
) -> None:
    a, b, c = await regions("a", "b", "c")
    service = await start_router(
        make_config([a.config(), b.config(), c.config()], strategy="latency", health_check=FAST_HC)
    )
    stop = asyncio.Event()
    load = asyncio.create_task(
        drive(f"http://127.0.0.1:{service.proxy_port}/x", stop, concurrency=8)
    )
    await wait_until(lambda: b.hits >= 30, 5, "traffic on b")
    slowed_at = time.monotonic()
    b.delay_s = 1.5
    await wait_until(lambda: time.monotonic() - slowed_at > 3.0, 5, "3 s of load")
    stop.set()
    outcomes = await load
    assert all(o.status == 200 for o in outcomes)
    late = [o for o in outcomes if o.started > slowed_at + 1.0]
    assert len(late) > 300
    share = sum(1 for o in late if o.region == "b") / len(late)
    assert share < 0.01, share
    assert state(service, "b") is H  # moved by latency alone; its health check passes


async def test_flapping_health_does_not_flap_routing(
    regions: MakeRegions, start_router: StartRouter
) -> None:
    a, b, c = await regions("a", "b", "c")
    service = await start_router(
        make_config([a.config(), b.config(), c.config()], health_check=FAST_HC)
    )
    history = service.runtime.registry.history
    # c goes properly down first
    c.health_status = 503
    await wait_until(lambda: state(service, "c") is U, 5, "c down")
    seen = len(history)
    b.health_flap = c.health_flap = True
    b_probes, b_hits = b.probes, b.hits
    stop = asyncio.Event()
    load = asyncio.create_task(
        drive(f"http://127.0.0.1:{service.proxy_port}/x", stop, concurrency=2)
    )
    await wait_until(lambda: b.probes >= b_probes + 12 and c.probes >= 12, 10, "12 flaps")
    stop.set()
    outcomes = await load
    assert list(history)[seen:] == []  # no transition at all
    assert (state(service, "b"), state(service, "c")) == (H, U)
    assert b.hits > b_hits and all(o.status == 200 for o in outcomes)


async def test_all_regions_down_is_panic_and_fails_open(
    regions: MakeRegions, start_router: StartRouter
) -> None:
    a, b = await regions("a", "b")
    service = await start_router(make_config([a.config(), b.config()], health_check=FAST_HC))
    a.health_status = b.health_status = 503  # health fails; the application still answers
    await wait_until(lambda: service.runtime.holder.current.panic, 5, "panic")
    async with aiohttp.ClientSession() as s:
        got = {(await get(s, service))[:2] for _ in range(20)}
        assert got == {(200, "a"), (200, "b")}  # fail open: every region, not none
        async with s.get(f"http://127.0.0.1:{service.admin_port}/admin/status") as resp:
            assert (await resp.json())["panic"] is True
    assert (await metrics(service))["router_panic"] == 1.0
    a.health_status = 200
    await wait_until(lambda: not service.runtime.holder.current.panic, 5, "panic over")
    assert (await metrics(service))["router_panic"] == 0.0
    async with aiohttp.ClientSession() as s:
        assert {(await get(s, service))[1] for _ in range(10)} == {"a"}


# -- recovery ------------------------------------------------------------------------------


async def test_recovery_ramps_back_with_slow_start(
    regions: MakeRegions, start_router: StartRouter
) -> None:
    a, b = await regions("a", "b")
    service = await start_router(
        make_config(
            [a.config(), b.config()],
            health_check=FAST_HC,
            failover={"slow_start": "2s"},
        )
    )
    b.health_status = 503
    await wait_until(lambda: state(service, "b") is U, 5, "b down")
    b.health_status = 200
    await wait_until(lambda: state(service, "b") is R, 5, "b recovering")
    ramp_began = time.monotonic()
    early: list[str | None] = []
    async with aiohttp.ClientSession() as s:
        while time.monotonic() - ramp_began < 0.4:
            early.append((await get(s, service))[1])
        await wait_until(lambda: state(service, "b") is H, 5, "slow start complete")
        assert time.monotonic() - ramp_began > 1.5
        late = [(await get(s, service))[1] for _ in range(200)]
    assert len(early) > 50
    assert early.count("b") / len(early) < 0.25  # 10% weight at first: ~9% of turns
    assert late.count("b") == 100  # fully back: round robin again
    reasons = [(t.to_state, t.reason) for t in service.runtime.registry.history if t.region == "b"]
    assert reasons[-2:] == [(R, "probe ok"), (H, "slow start complete")]


@pytest.mark.parametrize("misbehaviour", ["failures", "latency"])
async def test_guarded_failback_reejects_a_bad_recovery(
    regions: MakeRegions, start_router: StartRouter, misbehaviour: str
) -> None:
    a, b, c = await regions("a", "b", "c")
    service = await start_router(
        make_config(
            [a.config(), b.config(), c.config()],
            health_check=FAST_HC,
            failover={"slow_start": "5s"},
            outlier_detection={"consecutive_failures": 1000, "base_ejection_time": "30s"},
            retries={"min_concurrent": 6},  # drive()'s six clients may all be retrying
        )
    )
    b.health_status = 503
    await wait_until(lambda: state(service, "b") is U, 5, "b down")
    if misbehaviour == "failures":
        b.status = 503  # health passes again, the application does not
    else:
        b.delay_s = 0.3
    b.health_status = 200
    stop = asyncio.Event()
    load = asyncio.create_task(drive(f"http://127.0.0.1:{service.proxy_port}/x", stop))
    await wait_until(lambda: state(service, "b") is R, 5, "b recovering")
    took = await wait_until(lambda: state(service, "b") is E, 5, "b ejected again")
    probes = b.probes
    await wait_until(lambda: b.probes >= probes + 3, 5, "three passing probes")
    stop.set()
    outcomes = await load
    assert took < 2.0
    assert state(service, "b") is E  # sticky: passing probes do not let it back early
    assert all(o.status == 200 for o in outcomes)
    last = [t for t in service.runtime.registry.history if t.region == "b"][-1]
    assert (last.from_state, last.to_state) == (R, E)
    assert last.reason.startswith("guarded failback")
    m = await metrics(service)
    assert m['router_failovers_total{reason="guarded_failback",region="b"}'] == 1.0


# -- passive ejection limits ------------------------------------------------------------------


async def test_the_last_eligible_region_is_never_ejected(
    regions: MakeRegions, start_router: StartRouter
) -> None:
    a, b = await regions("a", "b")
    a.status = b.status = 503
    service = await start_router(
        make_config(
            [a.config(), b.config()],
            health_check=FAST_HC,
            outlier_detection={"consecutive_failures": 3, "max_ejection_percent": "100%"},
        )
    )
    statuses = set()
    async with aiohttp.ClientSession() as s:
        for _ in range(60):
            statuses.add((await get(s, service))[0])
            eligible = [r.id for r in service.runtime.holder.current.regions if r.eligible]
            assert eligible, "both regions out"
    assert {state(service, "a"), state(service, "b")} & {H, R}
    assert statuses == {503}  # the regions' own answers, never "no eligible region"


async def test_max_ejection_percent_holds(regions: MakeRegions, start_router: StartRouter) -> None:
    rs = await regions("a", "b", "c", "d")
    for r in rs[:3]:
        r.status = 503
    service = await start_router(
        make_config(
            [r.config() for r in rs],
            health_check={"interval": "10s", "timeout": "1s"},  # no un-ejecting probes
            outlier_detection={"consecutive_failures": 3, "max_ejection_percent": "50%"},
        )
    )
    most = 0
    async with aiohttp.ClientSession() as s:
        for _ in range(80):
            await get(s, service)
            ejected = sum(1 for r in service.runtime.holder.current.regions if r.state is E)
            most = max(most, ejected)
    assert most == 2
    assert state(service, "d") is H


# -- affinity ------------------------------------------------------------------------------


async def test_sticky_sessions_move_when_their_region_fails(
    regions: MakeRegions, start_router: StartRouter
) -> None:
    a, b = await regions("a", "b")
    service = await start_router(
        make_config([a.config(), b.config()], health_check=FAST_HC, affinity={"cookie": "rr"})
    )
    by_name = {"a": a, "b": b}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        _, pinned, resp = await get(s, service)
        assert pinned is not None
        assert resp.headers["Set-Cookie"].startswith(f"rr={pinned};")
        cookie = {"Cookie": f"rr={pinned}"}
        assert {(await get(s, service, headers=cookie))[1] for _ in range(10)} == {pinned}
        other = "b" if pinned == "a" else "a"

        by_name[pinned].health_status = 503
        await wait_until(lambda: state(service, pinned) is U, 5, "pinned region down")
        _, moved, resp = await get(s, service, headers=cookie)
        assert moved == other
        assert resp.headers["Set-Cookie"].startswith(f"rr={other};")

        by_name[pinned].health_status = 200
        await wait_until(lambda: state(service, pinned) in (R, H), 5, "old region back")
        cookie = {"Cookie": f"rr={other}"}
        got = {(await get(s, service, headers=cookie))[1] for _ in range(10)}
        assert got == {other}  # the new pin holds while its region stays eligible


# -- retries (CONTRACT section 4) ------------------------------------------------------------


async def test_a_post_to_a_dead_region_is_retried_elsewhere_with_its_body(
    regions: MakeRegions, start_router: StartRouter
) -> None:
    a, b = await regions("a", "b")
    service = await start_router(
        make_config([a.config(), b.config()], health_check={"interval": "10s", "timeout": "1s"})
    )
    await b.kill()  # still "healthy": no probe until 10 s from now
    async with aiohttp.ClientSession() as s:
        for i in range(4):
            status, region, _ = await get(s, service, method="POST", data=f"payload-{i}")
            assert (status, region) == (200, "a")
    assert a.hits == 4


async def test_a_lone_region_is_retried_rather_than_503(
    regions: MakeRegions, start_router: StartRouter
) -> None:
    (a,) = await regions("a")
    service = await start_router(make_config([a.config()], health_check=FAST_HC))
    a.reset_next = 1
    async with aiohttp.ClientSession() as s:
        assert (await get(s, service))[:2] == (200, "a")
    assert a.hits == 2
    assert (await metrics(service))['router_retries_total{reason="reset"}'] == 1.0


async def test_retry_after_pauses_the_region_and_the_retry_goes_elsewhere(
    regions: MakeRegions, start_router: StartRouter
) -> None:
    a, b = await regions("a", "b")
    a.status, a.retry_after = 503, "1"
    service = await start_router(
        make_config(
            [a.config(priority=0), b.config(priority=1)],
            strategy="priority",
            health_check=FAST_HC,
            outlier_detection={"consecutive_failures": 1000},
        )
    )
    async with aiohttp.ClientSession() as s:
        paused_at = time.monotonic()
        assert (await get(s, service))[:2] == (200, "b")
        assert a.hits == 1
        for _ in range(5):
            assert (await get(s, service))[:2] == (200, "b")
        assert a.hits == 1  # paused for the Retry-After period

        async def poke() -> bool:
            await get(s, service)
            return a.hits > 1

        while not await poke():
            assert time.monotonic() - paused_at < 3.0
            await asyncio.sleep(0.05)
    assert time.monotonic() - paused_at >= 0.95


async def test_a_retried_attempt_is_timed_from_its_own_start(
    regions: MakeRegions, start_router: StartRouter
) -> None:
    a, b = await regions("a", "b")
    a.delay_s = 2.0
    service = await start_router(
        make_config(
            [a.config(priority=0), b.config(priority=1)],
            strategy="priority",
            health_check=FAST_HC,
            timeouts={"response_headers": "300ms"},
        )
    )
    async with aiohttp.ClientSession() as s:
        started = time.monotonic()
        assert (await get(s, service))[:2] == (200, "b")
        assert time.monotonic() - started >= 0.3
    loads = service.runtime.loads
    mean_b = loads.get("b").mean_s
    assert mean_b is not None and mean_b < 0.1  # b answered fast; a's timeout is not b's
    assert (loads.get("a").cost_s or 0.0) >= 0.3


async def test_a_retry_skipped_for_a_large_body_is_counted(
    regions: MakeRegions, start_router: StartRouter
) -> None:
    a, b = await regions("a", "b")
    a.reset_next = 1
    service = await start_router(
        make_config(
            [a.config(priority=0), b.config(priority=1)],
            strategy="priority",
            health_check=FAST_HC,
            retries={"buffer_body_max": "1KiB"},
        )
    )
    async with aiohttp.ClientSession() as s:
        status, _, _ = await get(s, service, method="PUT", data=b"x" * 4096)
    assert status == 502
    m = await metrics(service)
    assert m['router_retries_total{reason="skipped_body_too_large"}'] == 1.0
