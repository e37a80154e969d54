"""Replication-aware routing, end to end: replicate through the admin API, watch the proxy."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiohttp
from pytest_aiohttp import AiohttpServer

from router.service import RouterService
from tests.conftest import StartRouter, make_config
from tests.stores import admin_call, start_store, wait_job, write_payload

MODEL = "/models/fraud.bin"


async def spread(service: RouterService, path: str, n: int = 12) -> Counter[str]:
    """Send ``n`` requests through the proxy; count answers by region (or the 503 code)."""
    seen: Counter[str] = Counter()
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.get(f"http://127.0.0.1:{service.proxy_port}{path}") as resp:
                if resp.status == 503:
                    seen[resp.headers.get("X-Router-Error", "503")] += 1
                else:
                    assert resp.status == 200
                    seen[(await resp.json())["region"]] += 1
    return seen


async def test_requires_artifact_routes_only_to_verified_copies(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    src = await start_store(aiohttp_server, tmp_path, "src")
    r1 = await start_store(aiohttp_server, tmp_path, "r1")
    r2 = await start_store(aiohttp_server, tmp_path, "r2")
    write_payload(src.file(MODEL), 200_000)
    routes = [
        {"match": {"path_prefix": "/ml/"}, "regions": ["r1", "r2"], "requires_artifact": "fraud"},
        {
            "match": {"path_prefix": "/any/"},
            "regions": ["r1", "r2"],
            "requires_artifact": "fraud",
            "artifact_version": "any",
        },
        {
            "match": {"path_prefix": "/src/"},
            "requires_artifact": "fraud",
            "artifact_fallback": "source",
        },
    ]
    service = await start_router(
        make_config(
            [src.config(), r1.config(), r2.config()],
            routes=routes,
            replication={"backoff_base": "10ms"},
        )
    )
    assert await spread(service, "/ml/score") == {"no_eligible_region": 12}
    assert await spread(service, "/src/score", 3) == {"no_eligible_region": 3}  # no job yet

    # A copy to r1 is on its way (its PUT held): nothing is routed to r1 yet.
    r1.put_gate = asyncio.Event()
    body = {"kind": "model", "name": "fraud", "path": MODEL, "source": "src", "targets": ["r1"]}
    status, job = await admin_call(service, "POST", "/admin/replications", body)
    assert status == 202
    await asyncio.wait_for(r1.put_waiting.wait(), 10)
    assert await spread(service, "/ml/score") == {"no_eligible_region": 12}
    assert await spread(service, "/src/score", 4) == {"src": 4}  # fallback: the source
    assert r1.requests == 0
    # /admin/route says why: the route's regions lack a verified copy.
    _, why = await admin_call(service, "GET", "/admin/route?path=/ml/score")
    excluded = {c["id"]: c["excluded_because"] for c in why["candidates"]}
    assert excluded == {"r1": "no verified copy of fraud", "r2": "no verified copy of fraud"}
    assert why["winner"] is None

    # Verified: r1 takes the route's traffic; r2 (no copy) still none.
    r1.put_gate.set()
    assert (await wait_job(service, job["id"]))["state"] == "succeeded"
    assert await spread(service, "/ml/score") == {"r1": 12}
    assert await spread(service, "/src/score", 4) == {"r1": 4}  # a holder is up: no fallback
    assert r2.requests == 0

    # A new version goes to r2 only: "latest" follows it, "any" keeps both copies.
    write_payload(src.file(MODEL), 200_000, seed=7)
    body["targets"] = ["r2"]
    _, job2 = await admin_call(service, "POST", "/admin/replications", body)
    done = await wait_job(service, job2["id"])
    assert done["state"] == "succeeded"
    assert await spread(service, "/ml/score") == {"r2": 12}
    assert await spread(service, "/any/score") == {"r1": 6, "r2": 6}
    plan = service.runtime.holder.current.route_plans[0]
    assert plan.artifact_sha256 == done["sha256"]
    assert [r.id for r in plan.regions] == ["r2"]
