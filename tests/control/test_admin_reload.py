"""Config reload through POST /admin/reload, the file watcher and SIGHUP: validated first,
swapped atomically under load, invalid files change nothing, state survives."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
from pytest_aiohttp import AiohttpServer

from router.config.loader import load_config
from router.service import RouterService
from tests.admin.client import STEADY_CHECKS, Admin, eventually, spread, steady_load
from tests.backends import Region, router_process, start_region, write_config
from tests.conftest import StartRouter


def _file_config(tmp_path: Path, regions: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "listen": {"proxy": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "state_dir": str(tmp_path / "state"),
        "access_log": False,
        "reload": {"watch": False},
        "strategy": "weighted",
        "health_check": STEADY_CHECKS,
        "failover": {"slow_start": "0s"},
        "regions": regions,
        **extra,
    }


async def _start_from_file(
    start_router: StartRouter, path: Path, data: dict[str, Any]
) -> RouterService:
    write_config(path, data)
    return await start_router(load_config(path), config_path=str(path))


def _reloads(metrics_text: str, result: str) -> float:
    m = re.search(rf'^router_config_reloads_total{{result="{result}"}} (\S+)$', metrics_text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_fifty_reloads_under_steady_load_fail_no_request(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    r2 = await start_region(aiohttp_server, "r2")
    path = tmp_path / "config.yaml"

    def config(i: int) -> dict[str, Any]:
        weights = (100, 1) if i % 2 else (1, 100)
        return _file_config(tmp_path, [r1.config(weight=weights[0]), r2.config(weight=weights[1])])

    service = await _start_from_file(start_router, path, config(0))
    hashes = set()
    async with aiohttp.ClientSession() as session, steady_load(service.proxy_port) as load:
        admin = Admin(session, service.admin_port)
        for i in range(1, 51):
            write_config(path, config(i))
            reply = await admin.post("/admin/reload")
            assert reply.status == 200, reply
            assert reply.body["ok"] is True
            assert reply.body["diff"]["changed"].keys() == {"r1", "r2"}
            hashes.add(reply.body["config_hash"])
            await asyncio.sleep(0.01)  # let some traffic through each config
        await eventually(lambda: _at_least(load.total, 300), 10.0, "too little traffic")
    assert load.failures == [], load.failures[:5]
    assert len(hashes) == 2  # the same file content always gives the same hash
    assert load.regions.keys() == {"r1", "r2"}
    # the last config (i=50: r2 heavy) serves now, and both regions kept their health
    regions = (await _admin_get(service, "/admin/regions"))["regions"]
    assert [(r["id"], r["weight"], r["state"]) for r in regions] == [
        ("r1", 1, "healthy"),
        ("r2", 100, "healthy"),
    ]


async def _at_least(value: int, n: int) -> bool:
    return value >= n


async def _admin_get(service: RouterService, path: str) -> Any:
    async with aiohttp.ClientSession() as session:
        reply = await Admin(session, service.admin_port).get(path)
        assert reply.status == 200, reply
        return reply.body


async def test_an_invalid_config_changes_nothing_and_reports_every_error(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    r2 = await start_region(aiohttp_server, "r2")
    path = tmp_path / "config.yaml"
    good = _file_config(tmp_path, [r1.config(weight=100), r2.config(weight=0)])
    service = await _start_from_file(start_router, path, good)
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        before = (await admin.get("/admin/config")).body
        errors_before = _reloads((await admin.get("/metrics")).body, "error")
        bad = _file_config(
            tmp_path,
            [r1.config(weight=0), r2.config(weight=100), {"id": "r3", "endpoint": "ftp://x"}],
            strategy="fastest",
            health_check={"interval": "1s", "timeout": "5s"},
            retrys={},
        )
        write_config(path, bad)
        reply = await admin.post("/admin/reload")
        assert reply.status == 400, reply
        assert reply.body["error"]["code"] == "invalid_config"
        paths = {d["path"] for d in reply.body["error"]["details"]}
        assert {"regions[2].endpoint", "strategy", "health_check.timeout", "retrys"} <= paths
        assert reply.body["config_hash"] == before["config_hash"]
        after = (await admin.get("/admin/config")).body
        assert after == before  # same effective config, same hash
        assert await spread(session, service.proxy_port, 6) == {"r1": 6}  # routing unchanged
        status = (await admin.get("/admin/status")).body
        assert status["last_reload"]["ok"] is False
        assert status["config_hash"] == before["config_hash"]
        assert _reloads((await admin.get("/metrics")).body, "error") == errors_before + 1
        # an unreadable file is refused the same way
        path.write_bytes(b"\xff\xfe not utf-8")
        assert (await admin.post("/admin/reload")).status == 400
        path.write_text("regions: [unclosed")
        reply = await admin.post("/admin/reload")
        assert reply.status == 400
        assert "line" in reply.body["error"]["message"]
        assert (await admin.get("/admin/config")).body == before


async def test_the_file_watcher_reloads_after_the_debounce(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    path = tmp_path / "config.yaml"
    watch = {"watch": True, "debounce": "100ms"}
    service = await _start_from_file(
        start_router, path, _file_config(tmp_path, [r1.config(weight=10)], reload=watch)
    )
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        write_config(path, _file_config(tmp_path, [r1.config(weight=20)], reload=watch))

        async def reloaded() -> bool:
            return bool((await admin.region("r1"))["weight"] == 20)

        await eventually(reloaded, 5.0, "the watcher did not pick up the change")
        last = (await admin.get("/admin/status")).body["last_reload"]
        assert last["ok"] is True and last["source"] == "watch"
        assert last["diff"]["changed"] == {"r1": {"weight": [10, 20]}}
        # an invalid edit is reported once and changes nothing
        path.write_text("strategy: nope\n")

        async def rejected() -> bool:
            last = (await admin.get("/admin/status")).body["last_reload"]
            return bool(last["ok"] is False)

        await eventually(rejected, 5.0, "the watcher did not report the bad file")
        assert (await admin.region("r1"))["weight"] == 20


async def test_reload_keeps_state_of_unchanged_regions_and_drops_overrides_it_changes(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    r1, r2, r3 = [await start_region(aiohttp_server, n) for n in ("r1", "r2", "r3")]
    path = tmp_path / "config.yaml"
    regions = [r1.config(weight=10), r2.config(weight=10), r3.config()]
    service = await _start_from_file(start_router, path, _file_config(tmp_path, regions))
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        await admin.patch("/admin/regions/r1", {"weight": 5, "name": "first"})
        await admin.post("/admin/regions/r2/failover", {"reason": "kept across reloads"})
        await admin.post("/admin/regions/r3/failover", {"reason": "ended by re-pointing"})
        # the file changes r1's weight (not its name), and points r3 elsewhere
        changed = [r1.config(weight=50), r2.config(weight=10), r3.config()]
        changed[2]["endpoint"] = r1.url
        write_config(path, _file_config(tmp_path, changed, preserve_host=True))
        reply = await admin.post("/admin/reload")
        assert reply.status == 200, reply
        diff = reply.body["diff"]
        assert diff["changed"]["r1"] == {"weight": [10, 50]}
        assert diff["settings"] == {"preserve_host": [False, True]}
        assert diff["restart_required"] == []
        assert any("r1: runtime override of weight dropped" in n for n in diff["notes"])
        assert any("r3: failover operation ended" in n for n in diff["notes"])
        first = await admin.region("r1")
        assert first["weight"] == 50 and first["name"] == "first"
        assert first["overrides"] == {"name": "first"}
        assert await admin.state("r2") == "failed_over"  # same id and endpoint: state kept
        ops = (await admin.get("/admin/operations")).body
        assert [o["region"] for o in ops["active"]] == ["r2"]
        await admin.wait_state("r3", "healthy")
        # listen changes need a restart and say so
        write_config(
            path,
            _file_config(
                tmp_path,
                changed,
                preserve_host=True,
                listen={"proxy": "127.0.0.1:1", "admin": "127.0.0.1:0"},
            ),
        )
        reply = await admin.post("/admin/reload")
        assert reply.body["diff"]["restart_required"] == ["listen"]


async def test_get_config_redacts_the_token_and_carries_the_hash(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    path = tmp_path / "config.yaml"
    data = _file_config(tmp_path, [r1.config()], admin={"token": "s3cret-token"})
    service = await _start_from_file(start_router, path, data)
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port, token="s3cret-token")
        reply = await admin.get("/admin/config")
        assert reply.status == 200
        assert "s3cret-token" not in str(reply.body)
        assert reply.body["config"]["admin"]["token"] == "***"
        assert reply.body["config_hash"] == service.config.config_hash
        assert reply.headers["ETag"] == f'"{service.config.config_hash}"'
        assert reply.body["path"] == str(path)
        status = (await admin.get("/admin/status")).body
        assert status["config_hash"] == reply.body["config_hash"]


async def test_sighup_reloads_a_running_router(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    r1: Region = await start_region(aiohttp_server, "r1")
    data: dict[str, Any] = {
        "strategy": "weighted",
        "health_check": {"path": "/health", "interval": "200ms", "timeout": "150ms"},
        "regions": [r1.config(weight=10)],
    }
    async with router_process(tmp_path, data) as router, aiohttp.ClientSession() as session:
        admin = Admin(session, router.admin_port)
        data = {**data, "listen": _listen(router), "regions": [r1.config(weight=42)]}
        data.update(state_dir=str(tmp_path / "state"), reload={"watch": False}, access_log=False)
        write_config(tmp_path / "config.yaml", data)
        router.process.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return bool((await admin.region("r1"))["weight"] == 42)

        await eventually(reloaded, 10.0, f"SIGHUP did not reload:\n{router.log()}")
        last = (await admin.get("/admin/status")).body["last_reload"]
        assert last["source"] == "signal" and last["ok"] is True
        assert router.process.returncode is None


def _listen(router: Any) -> dict[str, str]:
    return {
        "proxy": f"127.0.0.1:{router.proxy_port}",
        "admin": f"127.0.0.1:{router.admin_port}",
    }
