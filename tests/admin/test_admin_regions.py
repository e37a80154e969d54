"""Regions through the admin API, observed through the proxy: register, patch, delete, status,
and bodies the API must refuse without changing anything."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import orjson
from pytest_aiohttp import AiohttpServer

from tests.admin.client import Admin, eventually, proxy_get, spread, steady_config, summary
from tests.backends import start_region
from tests.conftest import StartRouter


async def test_registered_region_serves_after_its_first_passing_check(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    r2 = await start_region(aiohttp_server, "r2")
    r2.healthy = False
    service = await start_router(steady_config([r1.config()]))
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        reply = await admin.post("/admin/regions", {"id": "r2", "endpoint": r2.url, "name": "R2"})
        assert reply.status == 201, reply
        assert reply.body["source"] == "runtime"
        assert reply.body["state"] == "unknown"
        assert reply.body["eligible"] is False
        # probed at once; a failing first check keeps it out of rotation
        await admin.wait_state("r2", "unhealthy")
        last_check = (await admin.region("r2"))["last_check"]
        assert last_check["ok"] is False and last_check["error"] == "status 503"
        assert last_check["status"] == 503
        assert (await spread(session, service.proxy_port, 10)) == {"r1": 10}
        assert r2.seen == []
        r2.healthy = True
        await admin.wait_state("r2", "healthy")
        assert (await spread(session, service.proxy_port, 10)) == {"r1": 5, "r2": 5}
        assert len(r2.seen) == 5
        listed = await admin.get("/admin/regions")
        assert [r["id"] for r in listed.body["regions"]] == ["r1", "r2"]
        again = await admin.post("/admin/regions", {"id": "r2", "endpoint": r2.url})
        assert again.status == 409
        assert again.body["error"]["code"] == "conflict"


async def test_patch_applies_to_routing_at_once(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    r2 = await start_region(aiohttp_server, "r2")
    config = steady_config([r1.config(), r2.config()], strategy="weighted")
    service = await start_router(config)
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        reply = await admin.patch("/admin/regions/r1", {"weight": 0})
        assert reply.status == 200, reply
        assert reply.body["weight"] == 0
        assert reply.body["overrides"] == {"weight": 0}  # a config region: a runtime override
        # no wait: the very next requests see the new weight
        assert await spread(session, service.proxy_port, 12) == {"r2": 12}
        reply = await admin.patch(
            "/admin/regions/r1", {"weight": 300, "name": "R one", "labels": {"geo": "eu"}}
        )
        assert reply.body["name"] == "R one"
        assert reply.body["labels"] == {"geo": "eu"}
        assert (await spread(session, service.proxy_port, 12))["r1"] >= 8
        status = (await admin.get("/admin/status")).body
        assert status["config_hash"] == config.config_hash  # overrides are not config


async def test_delete_drains_a_runtime_region_and_refuses_config_ones(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    r2 = await start_region(aiohttp_server, "r2")
    config = steady_config([r1.config()], state_dir=str(tmp_path / "state"))
    service = await start_router(config)
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        refused = await admin.delete("/admin/regions/r1")
        assert refused.status == 409
        assert "config file" in refused.body["error"]["message"]
        assert "reload" in refused.body["error"]["message"]
        assert (await admin.post("/admin/regions", {"id": "r2", "endpoint": r2.url})).status == 201
        await admin.wait_state("r2", "healthy")
        assert (await admin.patch("/admin/regions/r1", {"weight": 0})).status == 200
        # a slow request in flight on r2 while it is deleted
        slow = asyncio.create_task(proxy_get(session, service.proxy_port, "/delay/0.6"))
        await eventually(lambda: _arrived(r2), message="slow request never reached r2")
        deleting = asyncio.create_task(admin.delete("/admin/regions/r2"))
        await admin.wait_state("r2", "draining")
        # the removal is on disk before the drain ends: a crash now does not resurrect r2
        saved = orjson.loads((tmp_path / "state" / "regions.json").read_bytes())
        assert saved["data"]["runtime"] == []
        seen_before = len(r2.seen)
        for _ in range(5):  # no new requests reach a draining region
            status, _ = await proxy_get(session, service.proxy_port)
            assert status == 503
        assert len(r2.seen) == seen_before
        assert (await admin.post("/admin/regions/r2/recover")).status == 409
        assert await slow == (200, "r2")
        done = await deleting
        assert done.status == 200, done
        assert done.body["drained"] is True
        assert (await admin.get("/admin/regions/r2")).status == 404
        assert not r2.cancelled.is_set()


async def _arrived(region: object) -> bool:
    return bool(getattr(region, "seen", None))


async def test_region_status_carries_the_operator_fields(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    service = await start_router(steady_config([r1.config(labels={"geo": "us"})]))
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        await spread(session, service.proxy_port, 20)
        await spread(session, service.proxy_port, 5, "/status/500")

        async def sampled() -> bool:  # rates come from the 1 s traffic samples
            await proxy_get(session, service.proxy_port)
            return bool((await admin.region("r1"))["rps"] > 0)

        await eventually(sampled, 5.0, "rps never appeared")
        body = await admin.region("r1")
        for key in ("id", "name", "endpoint", "weight", "priority", "labels", "source", "state"):
            assert key in body
        assert body["state"] == "healthy" and body["source"] == "config"
        assert body["labels"] == {"geo": "us"}
        assert body["latency_estimate_ms"] > 0
        assert set(body["latency_ms"]) == {"p50", "p95", "p99"}
        assert body["latency_ms"]["p50"] is not None
        assert body["inflight"] == 0
        assert body["error_rate"] > 0
        assert body["last_check"]["ok"] is True and body["last_check"]["error"] is None
        assert body["last_check"]["at"] > 0
        assert body["times_ejected"] == 0
        assert body["artifacts"] == []
        assert body["failover_operation"] is None


async def test_bad_bodies_are_refused_with_field_paths_and_change_nothing(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    config = steady_config(
        [r1.config()], admin={"max_body": "2KiB"}, state_dir=str(tmp_path / "state")
    )
    service = await start_router(config)
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        before = summary((await admin.get("/admin/regions")).body)

        bad = await admin.call("POST", "/admin/regions", data=b'{"id": "r2", ')
        assert bad.status == 400
        assert bad.body["error"]["details"][0]["path"] == "body"
        assert "invalid JSON" in bad.body["error"]["message"]

        bad = await admin.call("POST", "/admin/regions", data=b"[1, 2]")
        assert bad.status == 400 and "object" in bad.body["error"]["message"]

        bad = await admin.post(
            "/admin/regions",
            {"id": "R 2", "endpoint": "ftp://x", "weight": "5", "labels": {"a": 1}, "wieght": 1},
        )
        assert bad.status == 400
        paths = {d["path"] for d in bad.body["error"]["details"]}
        assert paths == {"id", "endpoint", "weight", "labels.a", "wieght"}
        assert bad.body["error"]["code"] == "invalid"

        bad = await admin.patch("/admin/regions/r1", {"weight": 10_001, "endpoint": "http://x"})
        assert bad.status == 400
        assert {d["path"] for d in bad.body["error"]["details"]} == {"weight", "endpoint"}
        bad = await admin.patch("/admin/regions/r1", {})
        assert bad.status == 400

        bad = await admin.post("/admin/regions/r1/failover", {"drain": "soon", "target": 3})
        assert bad.status == 400
        assert {d["path"] for d in bad.body["error"]["details"]} == {"drain", "target"}

        big = {"id": "r2", "endpoint": r1.url, "name": "x" * 4096}
        too_big = await admin.post("/admin/regions", big)
        assert too_big.status == 413
        assert too_big.body["error"]["code"] == "body_too_large"

        async def chunks() -> object:
            for _ in range(8):
                yield b" " * 1024

        async with session.post(
            f"{admin.base}/admin/regions",
            data=chunks(),
            headers={"Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 413  # chunked: no Content-Length, cut off while reading

        assert summary((await admin.get("/admin/regions")).body) == before
        assert not (tmp_path / "state" / "regions.json").exists()  # nothing written


async def test_unknown_ids_are_404(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    service = await start_router(steady_config([r1.config()]))
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        for method, path in [
            ("GET", "/admin/regions/nope"),
            ("PATCH", "/admin/regions/nope"),
            ("DELETE", "/admin/regions/nope"),
            ("POST", "/admin/regions/nope/failover"),
            ("POST", "/admin/regions/nope/recover"),
            ("GET", "/admin/operations/op-000000000000"),
            ("POST", "/admin/operations/op-000000000000/undo"),
        ]:
            reply = await admin.call(
                method, path, json={"weight": 1} if method == "PATCH" else None
            )
            assert reply.status == 404, (method, path, reply)
            assert reply.body["error"]["code"] == "not_found"
        reply = await admin.post("/admin/regions/r1/failover", {"target": "nope"})
        assert reply.status == 400
        assert reply.body["error"]["details"] == [
            {"path": "target", "message": "no region with id 'nope'"}
        ]
