"""Runtime state in state_dir survives restarts and crashes; bad files are set aside, reported,
or (from a newer version) refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pytest_aiohttp import AiohttpServer

from router.config.loader import Config
from router.service import RouterService
from router.store.files import FORMAT_VERSION, KINDS
from tests.admin.client import Admin, steady_config, summary
from tests.backends import router_process, run_cli, start_region, write_config


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[tuple[RouterService, Admin]]:
    """One router life: start, wait for its first health round, stop."""
    service = RouterService(config)
    await service.start()
    try:
        await service.runtime.health.first_round.wait()
        async with aiohttp.ClientSession() as session:
            yield service, Admin(session, service.admin_port)
    finally:
        await service.stop(grace_s=1.0)


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _exists(path: Path) -> bool:
    return path.exists()


def _state_files(state_dir: Path) -> dict[str, Any]:
    out = {}
    for path in sorted(state_dir.glob("*.json")):
        doc = orjson.loads(path.read_bytes())
        assert doc["format"] == FORMAT_VERSION and doc["kind"] == path.stem
        out[path.stem] = doc["data"]
    return out


async def test_a_restart_keeps_registrations_overrides_failovers_and_history(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    r1, r2, r3 = [await start_region(aiohttp_server, n) for n in ("r1", "r2", "r3")]
    config = steady_config([r1.config(), r2.config()], state_dir=str(tmp_path / "state"))
    async with running(config) as (_, admin):
        reply = await admin.post(
            "/admin/regions", {"id": "r3", "endpoint": r3.url, "labels": {"tier": "gold"}}
        )
        assert reply.status == 201
        await admin.wait_state("r3", "healthy")
        assert (await admin.patch("/admin/regions/r1", {"weight": 7})).status == 200
        assert (await admin.patch("/admin/regions/r3", {"priority": 2})).status == 200
        op = (await admin.post("/admin/regions/r2/failover", {"reason": "rack swap"})).body
        history_before = (await admin.get("/admin/failover")).body["history"]
    assert {"regions", "operations", "history"} <= _state_files(tmp_path / "state").keys()

    async with running(config) as (_, admin):
        regions = {r["id"]: r for r in (await admin.get("/admin/regions")).body["regions"]}
        assert regions.keys() == {"r1", "r2", "r3"}
        assert regions["r3"]["source"] == "runtime"
        assert regions["r3"]["labels"] == {"tier": "gold"} and regions["r3"]["priority"] == 2
        assert regions["r1"]["weight"] == 7 and regions["r1"]["overrides"] == {"weight": 7}
        assert regions["r2"]["state"] == "failed_over"
        status = (await admin.get("/admin/status")).body
        assert [o["id"] for o in status["active_operations"]] == [op["operation"]["id"]]
        assert status["active_operations"][0]["reason"] == "rack swap"
        assert status["state_problems"] == []
        history = (await admin.get("/admin/failover")).body["history"]
        # everything from the first life is still there, after this life's transitions
        assert history[-len(history_before) :] == history_before
        # the restored operation can still be undone
        undone = await admin.post(f"/admin/operations/{op['operation']['id']}/undo")
        assert undone.status == 202


async def test_a_restart_drops_an_override_the_file_changed_meanwhile(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    state_dir = str(tmp_path / "state")
    async with running(steady_config([r1.config(weight=10)], state_dir=state_dir)) as (_, admin):
        await admin.patch("/admin/regions/r1", {"weight": 3, "name": "kept"})
    async with running(steady_config([r1.config(weight=20)], state_dir=state_dir)) as (_, admin):
        body = await admin.region("r1")
        assert body["weight"] == 20  # the file moved on: its value wins
        assert body["name"] == "kept" and body["overrides"] == {"name": "kept"}


async def test_kill_9_during_a_burst_of_admin_writes_leaves_every_state_file_parseable(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    data = {
        "strategy": "round_robin",
        "health_check": {"path": "/health", "interval": "200ms", "timeout": "150ms"},
        "regions": [r1.config()],
    }
    async with router_process(tmp_path, data) as router, aiohttp.ClientSession() as session:
        admin = Admin(session, router.admin_port)
        stop = asyncio.Event()
        enough = asyncio.Event()
        done = 0

        async def writer(n: int) -> None:
            nonlocal done
            i = 0
            while not stop.is_set():
                region_id = f"w{n}-{i}"
                with contextlib.suppress(aiohttp.ClientError):
                    await admin.post(
                        "/admin/regions", {"id": region_id, "endpoint": f"http://127.0.0.1:{9 + i}"}
                    )
                    await admin.patch("/admin/regions/r1", {"weight": 1 + i % 50})
                    await admin.post(f"/admin/regions/{region_id}/failover", {"reason": "burst"})
                    await admin.post(f"/admin/regions/{region_id}/recover")
                    done += 4
                    if done >= 200:
                        enough.set()
                i += 1

        writers = [asyncio.create_task(writer(n)) for n in range(4)]
        async with asyncio.timeout(30):
            await enough.wait()
        os.kill(router.pid, signal.SIGKILL)
        stop.set()
        await asyncio.gather(*writers)
        assert await router.wait_exit(10) == -signal.SIGKILL
    state_dir = tmp_path / "state"
    files = _state_files(state_dir)  # every document parses and names its format
    assert files.keys() <= set(KINDS)
    assert files["regions"]["runtime"], "the burst registered regions"
    config = steady_config([r1.config()], state_dir=str(state_dir))
    async with running(config) as (service, admin):
        status = (await admin.get("/admin/status")).body
        assert status["state_problems"] == []
        ids = {r["id"] for r in status["regions"]}
        assert {r["id"] for r in files["regions"]["runtime"]} <= ids
        assert not list(state_dir.glob(".*.tmp"))  # a crash's temp files are cleaned up
        assert service.control.store.problems == []


async def test_a_corrupt_state_file_is_moved_aside_and_reported(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "regions.json").write_bytes(b'{"format": 1, "kind": "regions", "data": {"run')
    (state_dir / "operations.json").write_bytes(
        orjson.dumps({"format": 1, "kind": "operations", "data": {"active": [{"id": 5}]}})
    )
    async with running(steady_config([r1.config()], state_dir=str(state_dir))) as (_, admin):
        problems = (await admin.get("/admin/status")).body["state_problems"]
        by_kind = {p["kind"]: p for p in problems}
        assert by_kind.keys() == {"regions", "operations"}
        moved = Path(by_kind["regions"]["moved_to"])
        assert moved.name.startswith("regions.json.corrupt-")
        assert _read(moved).startswith(b'{"format": 1')  # kept, not dropped
        assert not _exists(state_dir / "regions.json")
        assert "corrupt" in by_kind["regions"]["message"]
        kept = Path(by_kind["operations"]["moved_to"])
        assert kept.name.startswith("operations.json.invalid-") and _exists(kept)
        # the router runs, and its next write is a good file
        assert (await admin.patch("/admin/regions/r1", {"weight": 9})).status == 200
        assert _state_files(state_dir)["regions"]["overrides"] == {"r1": {"weight": 9}}


async def test_a_state_file_from_a_newer_version_refuses_start(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    newer = {"format": FORMAT_VERSION + 1, "kind": "operations", "data": {"shape": "new"}}
    (state_dir / "operations.json").write_bytes(orjson.dumps(newer))
    config = write_config(
        tmp_path / "config.yaml",
        {
            "listen": {"proxy": "127.0.0.1:0", "admin": "127.0.0.1:0"},
            "state_dir": str(state_dir),
            "regions": [r1.config()],
        },
    )
    code, _, err = await run_cli("run", "-c", str(config), cwd=tmp_path)
    assert code == 1, err
    assert "newer region-router" in err and "operations.json" in err
    assert orjson.loads((state_dir / "operations.json").read_bytes()) == newer  # untouched


async def test_a_failed_state_write_changes_nothing_and_answers_503(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    r1, r2 = [await start_region(aiohttp_server, n) for n in ("r1", "r2")]
    state_dir = tmp_path / "state"
    config = steady_config([r1.config(), r2.config()], state_dir=str(state_dir))
    async with running(config) as (_, admin):
        assert (await admin.patch("/admin/regions/r1", {"weight": 5})).status == 200
        state_dir.rename(tmp_path / "elsewhere")
        state_dir.write_text("a file where the directory was: every write now fails")
        before = summary((await admin.get("/admin/regions")).body)
        for method, path, body in [
            ("POST", "/admin/regions", {"id": "r9", "endpoint": r2.url}),
            ("PATCH", "/admin/regions/r1", {"weight": 6}),
            ("POST", "/admin/regions/r2/failover", {}),
        ]:
            reply = await admin.call(method, path, json=body)
            assert reply.status == 503, reply
            assert reply.body["error"]["code"] == "store_unavailable"
            assert "nothing was changed" in reply.body["error"]["message"]
        assert summary((await admin.get("/admin/regions")).body) == before
        assert await admin.state("r2") == "healthy"
        assert (await admin.get("/admin/operations")).body["active"] == []
