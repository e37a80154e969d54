"""Decisions explained without side effects: /admin/route, /admin/best-region, /admin/simulate."""

from __future__ import annotations

from typing import Any

import aiohttp
from pytest_aiohttp import AiohttpServer

from tests.admin.client import Admin, spread, steady_config, summary
from tests.backends import start_region
from tests.conftest import StartRouter


async def _router(
    aiohttp_server: AiohttpServer, start_router: StartRouter, **extra: Any
) -> tuple[Any, dict[str, Any]]:
    regions = {}
    for name, priority in (("us-east-1", 0), ("eu-west-1", 0), ("ap-south-1", 1)):
        region = await start_region(aiohttp_server, name)
        regions[name] = region.config(priority=priority)
    config = steady_config(list(regions.values()), **extra)
    return await start_router(config), regions


async def test_route_explains_every_candidate_and_the_winner(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    service, _ = await _router(
        aiohttp_server,
        start_router,
        strategy="latency",
        affinity={"cookie": "rr_region"},
        routes=[{"match": {"path_prefix": "/api/ml/"}, "regions": ["eu-west-1", "ap-south-1"]}],
    )
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        await admin.post("/admin/regions/us-east-1/failover", {"reason": "test"})
        body = (await admin.get("/admin/route?method=post&path=/checkout")).body
        assert body["request"] == {"method": "POST", "path": "/checkout", "host": ""}
        assert body["route"] is None and body["strategy"] == "latency"
        by_id = {c["id"]: c for c in body["candidates"]}
        assert by_id.keys() == {"us-east-1", "eu-west-1", "ap-south-1"}
        for c in by_id.values():
            assert {"state", "weight", "cost", "priority", "tier_share", "eligible"} <= c.keys()
        assert by_id["us-east-1"]["state"] == "failed_over"
        assert by_id["us-east-1"]["excluded_because"] == "state failed_over"
        # us-east-1 out: tier 0 is 1 of 1 counted healthy -> keeps everything
        assert by_id["eu-west-1"]["tier_share"] == 1.0
        assert by_id["ap-south-1"]["tier_share"] == 0.0
        assert body["winner"] == "eu-west-1"
        assert body["reason"]
        assert [t["priority"] for t in body["tiers"]] == [0, 1]

        # a path the route matches (dot segments normalised first)
        body = (await admin.get("/admin/route?path=/public/../api/ml/score")).body
        assert body["route"] == 0
        assert {c["id"] for c in body["candidates"]} == {"eu-west-1", "ap-south-1"}

        sticky = (await admin.get("/admin/route?path=/&header=Cookie:rr_region=ap-south-1")).body
        assert sticky["winner"] == "ap-south-1"
        assert sticky["reason"].startswith("sticky session")

        bad = await admin.get("/admin/route?path=/../../etc&header=nocolon")
        assert bad.status == 400
        assert {d["path"] for d in bad.body["error"]["details"]} == {"header[0]"}
        bad = await admin.get("/admin/route?path=/../../etc")
        assert bad.status == 400 and bad.body["error"]["details"][0]["path"] == "path"


async def test_best_region_for_the_live_or_another_strategy(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    service, _ = await _router(aiohttp_server, start_router, strategy="round_robin")
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        await admin.patch("/admin/regions/us-east-1", {"weight": 0})
        best = (await admin.get("/admin/best-region")).body
        assert best["strategy"] == "round_robin"
        assert best["region"]["id"] == "eu-west-1"
        # another strategy is asked on a copy: live overrides and states still count
        best = (await admin.get("/admin/best-region?strategy=latency")).body
        assert best["strategy"] == "latency" and best["region"]["id"] == "eu-west-1"
        assert (await admin.get("/admin/status")).body["strategy"] == "round_robin"
        bad = await admin.get("/admin/best-region?strategy=fastest")
        assert bad.status == 400 and bad.body["error"]["details"][0]["path"] == "strategy"
        for region_id in ("eu-west-1", "ap-south-1"):
            await admin.post(f"/admin/regions/{region_id}/failover")
        none = await admin.get("/admin/best-region")
        assert none.status == 503 and none.body["error"]["code"] == "no_eligible_region"


async def test_simulate_answers_what_if_and_changes_nothing(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    service, regions = await _router(aiohttp_server, start_router, strategy="latency")
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        before = (await admin.get("/admin/status")).body
        regions_before = summary(before)

        # "eu-west-1 down, us-east-1 latency 300ms": tier 0 at 50% x 1.4 keeps 70%
        reply = await admin.post(
            "/admin/simulate",
            {
                "regions": {
                    "eu-west-1": {"state": "down"},
                    "us-east-1": {"latency": "300ms"},
                    "ap-south-1": {"latency": "20ms"},
                }
            },
        )
        assert reply.status == 200, reply
        sim = reply.body
        assert sim["applied"] is False
        assert sim["regions"]["eu-west-1"] == "unhealthy"
        default = sim["default"]
        assert not default["panic"]
        shares = {t["priority"]: t["share"] for t in default["tiers"]}
        assert shares == {0: 0.7, 1: 0.3}
        assert abs(default["split"]["us-east-1"] - 0.7) < 0.03
        assert abs(default["split"]["ap-south-1"] - 0.3) < 0.03
        assert "eu-west-1" not in default["split"]

        # everything down: panic, fail open to every region out for health reasons
        everything_down = {name: {"state": "down"} for name in regions}
        sim = (await admin.post("/admin/simulate", {"regions": everything_down})).body
        assert sim["panic"] is True and sim["default"]["panic"] is True
        split = sim["default"]["split"]
        assert len(split) >= 2 and set(split) <= set(regions)  # P2C: not the dearest of 3
        assert [t["regions"] for t in sim["default"]["tiers"]] == [list(regions)]

        # a proposed config: a new region, another strategy
        proposed = {
            "strategy": "weighted",
            "regions": [
                {**regions["us-east-1"], "weight": 300},
                regions["eu-west-1"],
                {"id": "sa-east-1", "endpoint": "http://127.0.0.1:9"},
            ],
        }
        sim = (await admin.post("/admin/simulate", {"config": proposed})).body
        assert sim["default"]["strategy"] == "weighted"
        assert sim["regions"] == {
            "us-east-1": "healthy",
            "eu-west-1": "healthy",
            "sa-east-1": "healthy",  # assumed to pass its first check
        }
        split = sim["default"]["split"]
        assert abs(split["us-east-1"] - 0.6) < 0.02 and abs(split["sa-east-1"] - 0.2) < 0.02
        assert sim["config_hash"] != before["config_hash"]

        bad = await admin.post(
            "/admin/simulate",
            {"regions": {"nowhere": {"state": "down"}, "eu-west-1": {"state": "sleepy"}}},
        )
        assert bad.status == 400
        assert {d["path"] for d in bad.body["error"]["details"]} == {"regions.eu-west-1.state"}
        bad = await admin.post("/admin/simulate", {"regions": {"nowhere": {"state": "down"}}})
        assert bad.status == 400 and bad.body["error"]["details"][0]["path"] == "regions.nowhere"
        bad = await admin.post("/admin/simulate", {"config": {"strategy": "nope"}})
        assert bad.status == 400 and bad.body["error"]["details"][0]["path"] == "config.strategy"

        after = (await admin.get("/admin/status")).body
        assert summary(after) == regions_before
        assert after["config_hash"] == before["config_hash"]
        assert [r["state"] for r in after["regions"]] == ["healthy"] * 3
        assert set(await spread(session, service.proxy_port, 10)) <= {"us-east-1", "eu-west-1"}
