"""Active health checks: thresholds, first-verdict rule, intervals, probe RTT, the real prober.

Verdicts are driven through ``HealthChecker.apply`` with an injected clock, so no test
waits for an interval; the loop tests use a scripted probe function and events.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from router.config.loader import HealthCheckConfig, RegionConfig
from router.health.checker import HealthChecker, HttpProber, ProbeResult
from router.state.registry import Registry, Transition
from router.state.snapshot import RegionState
from tests.conftest import make_config
from tests.poll import eventually

OK = ProbeResult(True, 0.002)
FAIL = ProbeResult(False, 0.001, "status 503", 503)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def checker(
    n: int = 1, probe: Any = None, **sections: Any
) -> tuple[HealthChecker, Registry, list[Transition], Clock]:
    sections.setdefault(
        "health_check",
        {
            "interval": "1s",
            "timeout": "500ms",
            "healthy_threshold": 2,
            "unhealthy_threshold": 3,
            "jitter": "10%",
        },
    )
    sections.setdefault("failover", {"slow_start": "10s"})
    config = make_config(
        [{"id": f"r{i}", "endpoint": f"http://127.0.0.1:{9100 + i}"} for i in range(n)],
        **sections,
    )
    clock = Clock()
    registry = Registry(config, now=clock.now)
    seen: list[Transition] = []

    async def never(rc: RegionConfig, hc: HealthCheckConfig) -> ProbeResult:
        raise AssertionError("not used")

    hc = HealthChecker(
        registry,
        probe or never,
        on_transition=seen.append,
        clock=clock,
        wall=clock,
        rng=random.Random(0),
    )
    return hc, registry, seen, clock


def state(registry: Registry, region_id: str = "r0") -> RegionState:
    return registry.snapshot().by_id[region_id].state


def test_a_new_region_serves_after_its_first_passing_probe() -> None:
    hc, registry, seen, _ = checker()
    assert state(registry) is RegionState.UNKNOWN
    hc.apply("r0", OK)
    assert state(registry) is RegionState.HEALTHY
    assert [(t.from_state, t.to_state) for t in seen] == [
        (RegionState.UNKNOWN, RegionState.HEALTHY)
    ]


def test_a_new_region_failing_its_first_probe_still_needs_one_pass() -> None:
    hc, registry, _, _ = checker()
    hc.apply("r0", FAIL)
    assert state(registry) is RegionState.UNHEALTHY
    hc.apply("r0", OK)
    assert state(registry) is RegionState.HEALTHY  # never served: no threshold, no ramp


def test_thresholds_down_after_three_failures_up_after_two_successes() -> None:
    hc, registry, seen, _ = checker()
    hc.apply("r0", OK)
    for _ in range(2):
        hc.apply("r0", FAIL)
        assert state(registry) is RegionState.HEALTHY
    hc.apply("r0", FAIL)
    assert state(registry) is RegionState.UNHEALTHY
    assert seen[-1].reason == "probe failed 3x: status 503"
    hc.apply("r0", OK)
    assert state(registry) is RegionState.UNHEALTHY
    hc.apply("r0", OK)
    # it served before: back through slow start
    assert state(registry) is RegionState.RECOVERING


def test_alternating_results_never_change_the_verdict() -> None:
    hc, registry, seen, _ = checker()
    hc.apply("r0", OK)
    for _ in range(20):
        hc.apply("r0", FAIL)
        hc.apply("r0", OK)
    assert state(registry) is RegionState.HEALTHY
    assert len(seen) == 1


def test_probe_interval_is_jittered_and_faster_while_changing() -> None:
    hc, _, _, _ = checker()
    hc.apply("r0", OK)
    delays = [hc.next_delay("r0") for _ in range(200)]
    assert all(0.9 <= d <= 1.1 for d in delays)
    assert max(delays) - min(delays) > 0.1  # actually jittered
    hc.apply("r0", FAIL)  # evidence against "up": re-check at interval / 3
    assert all(0.45 <= hc.next_delay("r0") <= 0.55 for _ in range(50))  # max(timeout, 1/3)
    for _ in range(2):
        hc.apply("r0", FAIL)
    assert all(0.9 <= hc.next_delay("r0") <= 1.1 for _ in range(50))  # settled down


def test_probe_rtt_feeds_the_snapshot() -> None:
    hc, registry, _, _ = checker()
    hc.apply("r0", ProbeResult(True, 0.004))
    assert registry.snapshot().by_id["r0"].probe_latency_s == 0.004
    version = registry.snapshot().version
    hc.apply("r0", ProbeResult(True, 0.0041))  # within 10%: no new snapshot needed
    assert registry.snapshot().version == version
    hc.apply("r0", ProbeResult(True, 0.010))
    assert registry.snapshot().by_id["r0"].probe_latency_s == 0.010


def test_a_passing_probe_unejects_into_slow_start() -> None:
    hc, registry, seen, clock = checker(n=2)
    hc.apply("r0", OK)
    hc.apply("r1", OK)
    registry.eject("r0", clock.now, clock.now, "outlier: test")
    assert state(registry) is RegionState.EJECTED
    hc.apply("r0", OK)
    assert state(registry) is RegionState.RECOVERING
    assert seen[-1].to_state is RegionState.RECOVERING


def test_a_sticky_ejection_outlives_passing_probes() -> None:
    hc, registry, _, clock = checker(n=2)
    hc.apply("r0", OK)
    hc.apply("r1", OK)
    registry.eject("r0", clock.now, clock.now, "guarded failback: test", sticky=True)
    for _ in range(5):
        hc.apply("r0", OK)
    assert state(registry) is RegionState.EJECTED


def test_an_operator_recover_needs_one_pass_then_ramps() -> None:
    hc, registry, _, clock = checker()
    hc.apply("r0", OK)
    registry.set_manual("r0", "failed_over", clock.now, clock.now, "test")
    registry.set_manual("r0", None, clock.now, clock.now, "recover")
    assert state(registry) is RegionState.UNKNOWN
    hc.apply("r0", OK)
    assert state(registry) is RegionState.RECOVERING


async def test_loops_probe_new_regions_at_once_and_set_first_round() -> None:
    calls: list[str] = []
    gate = asyncio.Event()

    async def probe(rc: RegionConfig, hc: HealthCheckConfig) -> ProbeResult:
        calls.append(rc.id)
        if rc.id == "r1":
            await gate.wait()
        return OK

    hc, registry, _, _ = checker(n=2, probe=probe)
    hc.sync()

    async def r0_answered() -> bool:
        return state(registry, "r0") is RegionState.HEALTHY

    # A poll with a deadline, not a fixed sleep: under load 50 ms was not always enough.
    await eventually(r0_answered, 5.0, "r0's first probe applied")
    assert sorted(calls) == ["r0", "r1"]
    assert not hc.first_round.is_set()  # r1 has not answered yet
    gate.set()
    await asyncio.wait_for(hc.first_round.wait(), 1.0)
    await hc.stop()


async def test_a_raising_probe_counts_as_a_failure_and_the_loop_goes_on() -> None:
    n = 0

    async def probe(rc: RegionConfig, hc: HealthCheckConfig) -> ProbeResult:
        nonlocal n
        n += 1
        if n == 1:
            raise RuntimeError("probe bug")
        return OK

    hc, registry, _, _ = checker(
        probe=probe, health_check={"interval": "20ms", "timeout": "10ms", "jitter": "0%"}
    )
    hc.sync()
    for _ in range(100):
        if state(registry) is RegionState.HEALTHY:
            break
        await asyncio.sleep(0.01)
    assert state(registry) is RegionState.HEALTHY
    assert hc.last_results["r0"][1].ok
    await hc.stop()


async def test_removed_regions_stop_and_changed_endpoints_restart() -> None:
    calls: list[str] = []

    async def probe(rc: RegionConfig, hc: HealthCheckConfig) -> ProbeResult:
        calls.append(rc.endpoint.url)
        return OK

    hc, registry, _, clock = checker(n=2, probe=probe, health_check={"interval": "1h"})
    hc.sync()
    await asyncio.sleep(0.02)
    registry.apply_config(
        make_config(
            [{"id": "r0", "endpoint": "http://127.0.0.1:9999"}], health_check={"interval": "1h"}
        ),
        clock.now,
    )
    hc.sync()
    await asyncio.sleep(0.02)
    assert calls.count("http://127.0.0.1:9999") == 1  # probed at once on the new endpoint
    assert repr(hc).startswith("<HealthChecker regions=1 ")
    await hc.stop()


# -- the real prober -------------------------------------------------------------------


async def probe_app(aiohttp_server: AiohttpServer, handler: Any) -> RegionConfig:
    app = web.Application()
    app.router.add_get("/health", handler)
    server = await aiohttp_server(app)
    config = make_config([{"id": "r", "endpoint": f"http://127.0.0.1:{server.port}"}])
    return config.regions[0]


@pytest.mark.parametrize(
    ("status", "body", "expected_status", "body_contains", "ok", "error"),
    [
        (200, "ok", "200-399", None, True, ""),
        (302, "", "200-399", None, True, ""),
        (503, "", "200-399", None, False, "status 503"),
        (204, "", "200,204", None, True, ""),
        (200, "status: ready", "200", "ready", True, ""),
        (200, "status: warming", "200", "ready", False, "body check failed"),
    ],
)
async def test_http_prober_checks_status_and_body(
    aiohttp_server: AiohttpServer,
    status: int,
    body: str,
    expected_status: str,
    body_contains: str | None,
    ok: bool,
    error: str,
) -> None:
    seen: dict[str, str] = {}

    async def health(request: web.Request) -> web.Response:
        seen.update(request.headers)
        return web.Response(status=status, text=body if status != 204 else None)

    region = await probe_app(aiohttp_server, health)
    hc_section: dict[str, Any] = {"expected_status": expected_status}
    if body_contains is not None:
        hc_section["body_contains"] = body_contains
    hc = make_config(health_check=hc_section).health_check
    prober = HttpProber("test-instance")
    try:
        result = await prober(region, hc)
    finally:
        await prober.close()
    assert (result.ok, result.error, result.status) == (ok, error, status)
    assert seen["User-Agent"].startswith("region-router/")
    assert seen["X-Router-Instance"] == "test-instance"


async def test_http_prober_times_out_and_reports_refusals(aiohttp_server: AiohttpServer) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response()

    region = await probe_app(aiohttp_server, slow)
    hc = make_config(health_check={"interval": "1s", "timeout": "100ms"}).health_check
    prober = HttpProber("i")
    try:
        result = await prober(region, hc)
        assert (result.ok, result.error) == (False, "timeout")
        assert 0.09 < result.latency_s < 0.5
        dead = make_config([{"id": "d", "endpoint": "http://127.0.0.1:9"}]).regions[0]
        refused = await prober(dead, hc)
        assert not refused.ok and "Connect" in refused.error
    finally:
        await prober.close()
