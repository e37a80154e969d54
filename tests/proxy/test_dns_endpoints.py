"""Region endpoints with host names: resolved with aiodns against a test DNS server (dnslib),
every address used, answer changes followed, stale-if-error, connection age."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import pytest

from router.config.loader import ConfigError
from router.service import RouterService
from tests.backends import router_process
from tests.conftest import StartRouter, make_config
from tests.dns_server import MultiRegion, Zone, dns_server, multi_region
from tests.h2region import H2MultiRegion, multi_region_h2
from tests.poll import eventually

ADDRESSES = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


Served = TypeVar("Served", bound=MultiRegion)


class Named(Protocol):
    async def __call__(
        self, zone: Zone, serving: AbstractAsyncContextManager[Served], **dns: Any
    ) -> tuple[Served, RouterService]: ...


@pytest.fixture
async def named(start_router: StartRouter) -> AsyncIterator[Named]:
    """``region, service = await named(zone, serving, **dns)``: a DNS server with ``zone``,
    the region ``serving`` starts, and a router whose one region is ``api.test`` on that
    region's port, resolved by that server (h2 for an h2 region); ``dns`` adds to the
    router's dns section. The DNS server and the region stop when the test ends."""
    async with AsyncExitStack() as stack:

        async def start(
            zone: Zone, serving: AbstractAsyncContextManager[Served], **dns: Any
        ) -> tuple[Served, RouterService]:
            nameserver = await stack.enter_async_context(dns_server(zone))
            region = await stack.enter_async_context(serving)
            endpoint: dict[str, Any] = {
                "id": "named",
                "endpoint": f"http://api.test:{region.port}",
            }
            if isinstance(region, H2MultiRegion):
                endpoint["protocol"] = "h2"
            config = make_config([endpoint], dns={"nameservers": [nameserver], **dns})
            return region, await start_router(config)

        yield start


@dataclass
class Load:
    """Requests sent back to back by a few clients; every result kept."""

    port: int
    results: list[tuple[float, int, str]] = field(default_factory=list)  # (t, status, address)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def failures(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200]

    def addresses_since(self, t: float) -> set[str]:
        return {a for at, _, a in self.results if at >= t}


@asynccontextmanager
async def load(port: int, clients: int = 4, path: str = "/echo") -> AsyncIterator[Load]:
    state = Load(port)

    async def client(session: aiohttp.ClientSession) -> None:
        while not state.stop.is_set():
            async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
                body = await resp.json() if resp.status == 200 else {}
                state.results.append((time.monotonic(), resp.status, body.get("address", "")))

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(clients)]
        try:
            yield state
        finally:
            state.stop.set()
            await asyncio.gather(*tasks)


async def follow_an_answer_change(zone: Zone, region: MultiRegion, traffic: Load) -> float:
    """Both addresses of the answer get traffic; then the answer becomes the third address
    alone. Returns how long until only it gets traffic; by then, and for 2 s more, the
    connections to the old addresses must be closed."""

    async def both_used() -> bool:
        return set(ADDRESSES[:2]) <= traffic.addresses_since(0)

    await eventually(both_used, 5, "both addresses of the answer get traffic")
    zone.records["api.test"] = [ADDRESSES[2]]
    changed = time.monotonic()

    async def only_new(window_s: float = 0.3) -> bool:
        now = time.monotonic()
        return traffic.addresses_since(now - window_s) == {ADDRESSES[2]} and (
            now - window_s > changed
        )

    # The bar: refresh (1s) + 1s, with no failed request meanwhile.
    took = await eventually(only_new, 2.0 + 0.3, "traffic follows the new answer")

    async def old_closed() -> bool:
        # Pooled connections to the addresses that left the answer are closed.
        return all(region.established(a) == 0 for a in ADDRESSES[:2])

    await eventually(old_closed, 2, "connections to old addresses closed")
    return took


@pytest.mark.parametrize("serving", [multi_region, multi_region_h2], ids=["http1", "h2"])
async def test_every_address_gets_traffic_and_an_answer_change_is_followed_in_time(
    named: Named, serving: Callable[[list[str]], AbstractAsyncContextManager[MultiRegion]]
) -> None:
    """HTTP/1.1 regions (the pool's connections) and h2 regions (their streams) alike."""
    zone = Zone({"api.test": ADDRESSES[:2]}, ttl=60)
    region, service = await named(zone, serving(ADDRESSES), refresh="1s")
    async with load(service.proxy_port) as traffic:
        took = await follow_an_answer_change(zone, region, traffic)
        assert took <= 2.3
        print(f"{serving.__name__}: answer change followed in {took:.2f}s (refresh 1s)")

        async def probed_new() -> bool:
            return region.probes[ADDRESSES[2]] > 0

        await eventually(probed_new, 3, "health checks reach the new address")
    assert traffic.failures() == []
    assert len(traffic.results) > 50
    assert region.hits[ADDRESSES[2]] > 0
    status = await region_status(service)
    assert status["dns"]["addresses"] == [ADDRESSES[2]]
    assert status["dns"]["stale"] is False


async def test_a_short_ttl_beats_the_refresh_interval(named: Named) -> None:
    zone = Zone({"api.test": [ADDRESSES[0]]}, ttl=1)
    region, service = await named(zone, multi_region(ADDRESSES), refresh="60s")
    async with load(service.proxy_port, clients=2) as traffic:
        await eventually(lambda: _true(traffic.results), 5, "first answers")
        zone.records["api.test"] = [ADDRESSES[1]]

        async def moved() -> bool:
            return region.hits[ADDRESSES[1]] > 0

        assert await eventually(moved, 2.5, "TTL 1s re-resolves long before refresh") < 2.5
    assert traffic.failures() == []


async def test_failed_lookups_keep_the_last_good_addresses_and_say_so(
    named: Named,
) -> None:
    zone = Zone({"api.test": ADDRESSES[:2]}, ttl=1)
    _, service = await named(zone, multi_region(ADDRESSES), refresh="1s")
    async with load(service.proxy_port, clients=2) as traffic:
        await eventually(lambda: _true(traffic.results), 5, "first answers")
        zone.failing = True
        failing_since = zone.queries

        async def stale() -> bool:
            status = await region_status(service)
            return bool(status["dns"] and status["dns"]["stale"])

        await eventually(stale, 5, "the region status says the addresses are stale")
        assert zone.queries > failing_since
        status = await region_status(service)
        assert status["dns"]["addresses"] == ADDRESSES[:2]
        assert status["dns"]["error"]
        metrics = service.runtime.metrics
        assert metrics.get_sample_value("router_dns_stale", {"region": "named"}) == 1.0
        assert (
            metrics.get_sample_value(
                "router_dns_lookups_total", {"host": "api.test", "result": "error"}
            )
            or 0
        ) >= 1
        served = len(traffic.results)

        async def still_served() -> bool:
            return len(traffic.results) > served + 20

        await eventually(still_served, 5, "requests keep flowing on the last addresses")
        zone.failing = False

        async def fresh() -> bool:
            return not (await region_status(service))["dns"]["stale"]

        await eventually(fresh, 5, "stale clears once lookups succeed again")
        assert metrics.get_sample_value("router_dns_stale", {"region": "named"}) == 0.0
    assert traffic.failures() == []


async def test_no_upstream_connection_outlives_max_connection_age(
    named: Named,
) -> None:
    zone = Zone({"api.test": [ADDRESSES[0]]}, ttl=60)
    _, service = await named(
        zone, multi_region(ADDRESSES), refresh="30s", max_connection_age="500ms"
    )
    pool = service.runtime.core.pool
    ages: list[float] = []
    async with load(service.proxy_port, clients=2) as traffic:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            ages.extend(now - c.born for c in list(pool._all))  # the pool's own view
            await asyncio.sleep(0.05)
    assert traffic.failures() == []
    assert len(traffic.results) > 20
    # Idle ones are swept within 0.1s; a busy one closes when its request ends.
    assert ages and max(ages) < 0.5 + 0.3, max(ages)


async def test_health_checks_follow_the_current_addresses(named: Named) -> None:
    zone = Zone({"api.test": [ADDRESSES[0]]}, ttl=60)
    region, _ = await named(zone, multi_region(ADDRESSES), refresh="1s")
    assert region.probes[ADDRESSES[0]] > 0
    zone.records["api.test"] = [ADDRESSES[1]]

    async def probed_new() -> bool:
        return region.probes[ADDRESSES[1]] > 0

    await eventually(probed_new, 3, "health checks reach the new address")
    before = region.probes[ADDRESSES[0]]
    await eventually(
        lambda: _true(region.probes[ADDRESSES[1]] > 3), 3, "more probes on the new address"
    )
    assert region.probes[ADDRESSES[0]] == before  # none on the old one any more


async def test_an_unresolvable_name_fails_over_like_a_refused_connection(
    named: Named,
) -> None:
    zone = Zone({}, ttl=60)
    _, service = await named(zone, multi_region(ADDRESSES[:1]))
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{service.proxy_port}/x") as resp,
    ):
        assert resp.status in (502, 503)


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        (["ns.example.com"], "an IP address, not a host name"),
        (["127.0.0.1:0"], 'expected "ip[:port]"'),
        (["[::1"], 'expected "ip[:port]"'),
    ],
)
def test_nameservers_are_ip_with_optional_port(servers: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(dns={"nameservers": servers})
    assert "dns.nameservers[0]" in str(info.value) and message in str(info.value)
    ok = make_config(dns={"nameservers": ["10.0.0.1", "127.0.0.1:5353", "[::1]:53", "::1"]})
    assert [str(s) for s in ok.dns.nameservers] == [
        "10.0.0.1:53",
        "127.0.0.1:5353",
        "[::1]:53",
        "[::1]:53",
    ]


async def region_status(service: RouterService) -> dict[str, Any]:
    from admin.views import region_json

    view = service.runtime.holder.current.by_id["named"]
    return region_json(service.control, view)


async def _true(value: object) -> bool:
    return bool(value)


async def test_an_address_that_refuses_falls_through_to_the_next(
    named: Named,
) -> None:
    # Like "localhost" as ::1 and 127.0.0.1 with the region listening on one of them.
    zone = Zone({"api.test": [ADDRESSES[0], "127.0.0.9"]}, ttl=60)
    _, service = await named(zone, multi_region(ADDRESSES[:1]))
    async with load(service.proxy_port, clients=2) as traffic:
        await eventually(lambda: _true(len(traffic.results) > 40), 5, "40 answers")
    assert traffic.failures() == []
    assert traffic.addresses_since(0) == {ADDRESSES[0]}
    errors = service.runtime.merged_stats().upstream_errors
    assert not errors, errors


async def test_workers_resolve_endpoint_names_too(tmp_path: Path) -> None:
    zone = Zone({"api.test": ADDRESSES[:2]}, ttl=60)
    async with dns_server(zone) as ns, multi_region(ADDRESSES) as region:
        config = {
            "regions": [{"id": "named", "endpoint": f"http://api.test:{region.port}"}],
            "health_check": {"interval": "200ms", "timeout": "150ms"},
            "dns": {"nameservers": [ns], "refresh": "1s"},
        }
        async with router_process(tmp_path, config, workers=2) as router:
            async with load(router.proxy_port, clients=4) as traffic:

                async def both() -> bool:
                    return set(ADDRESSES[:2]) <= traffic.addresses_since(0)

                await eventually(both, 10, "every worker's requests reach both addresses")
                zone.records["api.test"] = [ADDRESSES[2]]
                changed = time.monotonic()

                async def moved() -> bool:
                    now = time.monotonic()
                    recent = traffic.addresses_since(now - 0.3)
                    return now - 0.3 > changed and recent == {ADDRESSES[2]}

                await eventually(moved, 3, "every worker follows the new answer")
            assert traffic.failures() == []
            assert region.probes[ADDRESSES[2]] > 0  # the supervisor's health checks too


async def test_aaaa_answers_are_used_and_ipv4_comes_first(named: Named) -> None:
    zone = Zone({"api.test": [ADDRESSES[0]], "api.test/v6": ["::1"]}, ttl=60)
    _, service = await named(zone, multi_region([ADDRESSES[0], "::1"]), refresh="1s")
    status = await region_status(service)
    assert status["dns"]["addresses"] == [ADDRESSES[0], "::1"]
    async with load(service.proxy_port, clients=2) as traffic:

        async def both() -> bool:
            return traffic.addresses_since(0) == {ADDRESSES[0], "::1"}

        await eventually(both, 5, "IPv4 and IPv6 addresses both get traffic")
    assert traffic.failures() == []


async def test_addresses_take_turns_when_the_region_closes_every_connection(
    named: Named,
) -> None:
    zone = Zone({"api.test": ADDRESSES[:2]}, ttl=60)
    region, service = await named(zone, multi_region(ADDRESSES[:2]))
    async with load(service.proxy_port, clients=1, path="/echo?close=1") as traffic:
        await eventually(lambda: _true(len(traffic.results) >= 40), 5, "40 answers")
    assert traffic.failures() == []
    a, b = (region.hits[address] for address in ADDRESSES[:2])
    assert abs(a - b) <= 2, (a, b)  # strictly alternating, one request at a time


async def test_no_h2_region_connection_outlives_max_connection_age(
    named: Named,
) -> None:
    zone = Zone({"api.test": [ADDRESSES[0]]}, ttl=60)
    region, service = await named(
        zone, multi_region_h2(ADDRESSES), refresh="30s", max_connection_age="500ms"
    )
    async with load(service.proxy_port, clients=2) as traffic:
        await asyncio.sleep(2.0)  # the load runs this long; ages are checked below
    assert traffic.failures() == []
    assert len(traffic.results) > 20
    now = time.monotonic()
    ages = [c.age(now) for c in region.connections]
    # Swept within 0.1s of the age; a busy one closes when its last stream ends.
    assert len(ages) >= 4 and max(ages) < 0.5 + 0.3, ages


async def test_an_h2_region_behind_a_refusing_address_keeps_one_connection(
    named: Named,
) -> None:
    # The answer's first address refuses (nothing listens there): its turns fall through to
    # the second, on the connection already open there, not a new one each time.
    zone = Zone({"api.test": [ADDRESSES[1], ADDRESSES[0]]}, ttl=60)
    region, service = await named(zone, multi_region_h2([ADDRESSES[0]]), refresh="30s")
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(f"http://127.0.0.1:{service.proxy_port}/echo") as resp:
                assert resp.status == 200
                assert (await resp.json())["address"] == ADDRESSES[0]
    used = [c for c in region.connections if c.requests]
    assert len(used) <= 2, used  # at most one extra, opened by the first refused turn
    assert sum(c.requests for c in used) == 20
