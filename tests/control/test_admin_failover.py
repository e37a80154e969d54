"""Manual failover as an operation, through the admin API, observed through the proxy."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from router.service import RouterService
from tests.admin.client import Admin, spread, steady_config
from tests.backends import Region, start_region
from tests.conftest import StartRouter
from tests.poll import eventually

COOKIE = "rr_region"
AFFINITY = {"cookie": COOKIE}
ELIGIBLE = ("healthy", "recovering")
NO_RAMP = {"slow_start": "0s"}  # a recovered region takes its full share at once


@dataclass
class Operated:
    """Regions behind a router, and an operator's admin client and proxy client."""

    regions: list[Region]
    service: RouterService
    session: aiohttp.ClientSession
    admin: Admin

    async def spread(self, n: int, path: str = "/", **kw: Any) -> Counter[str]:
        return await spread(self.session, self.service.proxy_port, n, path, **kw)

    async def post(self, path: str, headers: dict[str, str]) -> tuple[int, str]:
        """(status, X-Router-Region) of one POST through the proxy."""
        url = f"http://127.0.0.1:{self.service.proxy_port}{path}"
        async with self.session.post(url, headers=headers) as r:
            await r.read()
            return r.status, r.headers.get("X-Router-Region", "")


StartOperated = Callable[..., Awaitable[Operated]]


@pytest.fixture
async def operated(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> AsyncIterator[StartOperated]:
    """``await operated(*region names, **sections)``: those regions behind a router with
    ``steady_config`` and ``sections``; the session closes before the router stops."""
    async with aiohttp.ClientSession() as session:

        async def start(*names: str, **sections: Any) -> Operated:
            regions = [await start_region(aiohttp_server, name) for name in names]
            service = await start_router(steady_config([r.config() for r in regions], **sections))
            return Operated(regions, service, session, Admin(session, service.admin_port))

        yield start


def _pinned(region_id: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={region_id}"}


async def test_failover_stops_new_requests_at_once_while_in_flight_ones_finish(
    operated: StartOperated,
) -> None:
    router = await operated("r1", "r2", affinity=AFFINITY)
    r1 = router.regions[0]
    admin = router.admin
    # A POST in flight finishes where it is (a GET waiting for headers would be
    # re-sent to r2 at once: tests/proxy/test_gray_failures.py).
    slow = asyncio.create_task(router.post("/delay/0.6", _pinned("r1")))
    async with asyncio.timeout(5):
        await r1.arrived.wait()
    reply = await admin.post("/admin/regions/r1/failover", {"reason": "maintenance"})
    assert reply.status == 200, reply
    op = reply.body["operation"]
    assert op["id"].startswith("op-") and op["state"] == "active"
    assert op["reason"] == "maintenance"
    assert reply.body["region"]["state"] == "failed_over"
    seen = len(r1.seen)
    # from the moment the answer arrived: not one new request, pinned ones included
    assert await router.spread(10) == {"r2": 10}
    assert await router.spread(4, headers=_pinned("r1")) == {"r2": 4}
    assert len(r1.seen) == seen
    assert await slow == (200, "r1")
    assert not r1.cancelled.is_set()
    status = (await admin.get("/admin/status")).body
    assert [o["id"] for o in status["active_operations"]] == [op["id"]]
    twice = await admin.post("/admin/regions/r1/failover", {})
    assert twice.status == 409
    assert op["id"] in twice.body["error"]["message"]


async def test_failover_to_a_target_moves_sticky_sessions_there(operated: StartOperated) -> None:
    router = await operated("r1", "r2", "r3", affinity=AFFINITY)
    admin = router.admin
    assert await router.spread(3, headers=_pinned("r1")) == {"r1": 3}
    reply = await admin.post("/admin/regions/r1/failover", {"target": "r3"})
    assert reply.status == 200, reply
    assert reply.body["operation"]["target"] == "r3"
    assert await router.spread(6, headers=_pinned("r1")) == {"r3": 6}
    explained = await admin.get(f"/admin/route?path=/&header=Cookie:{COOKIE}=r1")
    assert explained.body["winner"] == "r3"
    assert "moved" in explained.body["reason"]
    # sessions pinned elsewhere stay where they are
    assert await router.spread(3, headers=_pinned("r2")) == {"r2": 3}
    failover = (await admin.get("/admin/failover")).body
    by_id = {r["id"]: r for r in failover["regions"]}
    assert by_id["r1"]["failover_target"] == "r3"
    assert by_id["r1"]["operation"]["target"] == "r3"


async def test_recover_answers_202_and_the_region_serves_after_its_next_passing_check(
    operated: StartOperated,
) -> None:
    router = await operated("r1", "r2", failover=NO_RAMP)
    r1 = router.regions[0]
    admin = router.admin
    op = (await admin.post("/admin/regions/r1/failover", {"reason": "deploy"})).body
    r1.healthy = False  # the region is still broken when the operator recovers it
    reply = await admin.post("/admin/regions/r1/recover", {"reason": "deploy done"})
    assert reply.status == 202, reply
    assert reply.body["changed"] is True
    assert reply.body["operation"]["id"] == op["operation"]["id"]
    assert reply.body["operation"]["state"] == "ended"
    assert reply.body["operation"]["ended_reason"] == "deploy done"
    assert reply.body["region"]["state"] == "unknown"  # not eligible before a check
    await admin.wait_state("r1", "unhealthy")
    assert await router.spread(6) == {"r2": 6}
    r1.healthy = True
    await admin.wait_state("r1", *ELIGIBLE)  # back in rotation (slow start may run)
    assert await router.spread(6) == {"r1": 3, "r2": 3}
    again = await admin.post("/admin/regions/r1/recover")
    assert again.status == 202 and again.body["changed"] is False
    history = (await admin.get("/admin/failover")).body["history"]
    r1_moves = [(h["from"], h["to"]) for h in history if h["region"] == "r1"]
    assert r1_moves[0][0] == "unhealthy" and r1_moves[0][1] in ELIGIBLE
    assert r1_moves[1:4] == [
        ("unknown", "unhealthy"),
        ("failed_over", "unknown"),
        ("healthy", "failed_over"),
    ]
    newest = history[0]
    assert newest["region"] == "r1" and newest["at"] > 0 and newest["reason"]
    reasons = [h["reason"] for h in history if h["to"] == "failed_over"]
    assert any("deploy" in reason for reason in reasons)


async def test_an_expiring_operation_puts_the_region_back(operated: StartOperated) -> None:
    router = await operated("r1", "r2", failover=NO_RAMP)
    admin = router.admin
    reply = await admin.post("/admin/regions/r1/failover", {"expires": "400ms"})
    op_id = reply.body["operation"]["id"]
    assert reply.body["operation"]["expires_at"] > reply.body["operation"]["created_at"]
    assert await router.spread(4) == {"r2": 4}
    await admin.wait_state("r1", *ELIGIBLE, timeout_s=5.0)
    op = (await admin.get(f"/admin/operations/{op_id}")).body["operation"]
    assert op["state"] == "ended" and "expired" in op["ended_reason"]
    assert (await admin.get("/admin/status")).body["active_operations"] == []
    assert "r1" in await router.spread(4)


async def test_undo_ends_the_operation_once(operated: StartOperated) -> None:
    router = await operated("r1", "r2", failover=NO_RAMP)
    admin = router.admin
    op_id = (await admin.post("/admin/regions/r1/failover")).body["operation"]["id"]
    listed = (await admin.get("/admin/operations")).body
    assert [o["id"] for o in listed["active"]] == [op_id]
    undone = await admin.post(f"/admin/operations/{op_id}/undo")
    assert undone.status == 202, undone
    assert undone.body["operation"]["state"] == "ended"
    assert undone.body["operation"]["ended_reason"] == f"undo of {op_id}"
    assert (await admin.post(f"/admin/operations/{op_id}/undo")).status == 409
    await admin.wait_state("r1", *ELIGIBLE)
    # a new failover of the same region is a new operation
    again = await admin.post("/admin/regions/r1/failover")
    assert again.status == 200 and again.body["operation"]["id"] != op_id


async def test_failover_with_a_drain_keeps_pinned_sessions_for_the_drain_period(
    operated: StartOperated,
) -> None:
    router = await operated("r1", "r2", affinity=AFFINITY)
    admin = router.admin
    reply = await admin.post("/admin/regions/r1/failover", {"drain": "1s"})
    assert reply.status == 202, reply
    assert reply.body["region"]["state"] == "draining"
    assert await router.spread(4) == {"r2": 4}  # no new sessions
    assert await router.spread(2, headers=_pinned("r1")) == {"r1": 2}
    await admin.wait_state("r1", "failed_over", timeout_s=5.0)
    assert await router.spread(2, headers=_pinned("r1")) == {"r2": 2}

    async def ended_draining() -> bool:
        history = (await admin.get("/admin/failover")).body["history"]
        return any(h["from"] == "draining" and h["to"] == "failed_over" for h in history)

    await eventually(ended_draining, what="drain end not in the history")


async def test_a_failover_target_outside_the_route_does_not_take_its_sessions(
    operated: StartOperated,
) -> None:
    api_route = {"match": {"path_prefix": "/api/"}, "regions": ["r1", "r2"]}
    router = await operated("r1", "r2", "r3", affinity=AFFINITY, routes=[api_route])
    admin = router.admin
    assert (await admin.post("/admin/regions/r1/failover", {"target": "r3"})).status == 200
    # /api/ may only be served by r1 or r2: r1's sessions must go to r2, not r3
    pinned = await router.spread(4, "/api/x", headers=_pinned("r1"))
    assert pinned == {"r2": 4}
