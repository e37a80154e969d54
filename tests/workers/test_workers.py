"""`run --workers 2`: one control plane, two serving processes, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from pytest_aiohttp import AiohttpServer

from tests.backends import RouterProcess, free_port, start_region
from tests.backends import router_process as run_router

pytestmark = pytest.mark.timeout(90)


StartProcess = Callable[..., Awaitable[RouterProcess]]


@pytest.fixture
async def router_process(tmp_path: Path) -> AsyncIterator[StartProcess]:
    """``await router_process(regions)``: the real CLI with ``--workers 2``."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(regions: list[dict[str, Any]], workers: int = 2) -> RouterProcess:
            config = {
                "strategy": "round_robin",
                "health_check": {"path": "/health", "interval": "300ms", "timeout": "200ms"},
                "regions": regions,
            }
            return await stack.enter_async_context(run_router(tmp_path, config, workers=workers))

        yield start


async def admin_status(rp: RouterProcess, session: aiohttp.ClientSession) -> Any:
    async with session.get(f"{rp.admin}/admin/status") as resp:
        return orjson.loads(await resp.read())


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str | None]:
    # A new connection per request spreads requests over the workers' shared accept queue.
    async with session.get(url, headers={"Connection": "close"}) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Router-Region")


async def test_failover_applies_to_every_worker_and_metrics_sum(
    aiohttp_server: AiohttpServer, router_process: StartProcess
) -> None:
    a = await start_region(aiohttp_server, "a")
    b = await start_region(aiohttp_server, "b")
    rp = await router_process([{"id": "a", "endpoint": a.url}, {"id": "b", "endpoint": b.url}])
    async with aiohttp.ClientSession() as s:
        results = [await _get(s, f"{rp.proxy}/warm/{i}") for i in range(40)]
        assert {r for _, r in results} == {"a", "b"}
        async with s.post(f"{rp.admin}/admin/regions/a/failover", json={"reason": "t"}) as resp:
            assert resp.status == 200
        seen_before = len(a.seen)
        results = await asyncio.gather(*(_get(s, f"{rp.proxy}/after/{i}") for i in range(200)))
        assert all(code == 200 and region == "b" for code, region in results)
        assert len(a.seen) == seen_before  # not one new request reached the failed-over region
        status = await admin_status(rp, s)
        per_worker = [w["requests"] for w in status["workers"]]
        assert len(per_worker) == 2
        # /metrics counts every worker's traffic within a second.
        deadline = time.monotonic() + 3
        total = 0.0
        while time.monotonic() < deadline:
            async with s.get(f"{rp.admin}/metrics") as resp:
                text = await resp.text()
            total = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("router_requests_total{")
            )
            if total == 240:
                break
            await asyncio.sleep(0.1)
        assert total == 240
        status = await admin_status(rp, s)
        assert all(w["requests"] > 0 for w in status["workers"]), status["workers"]
        prop = status["snapshot_propagation_ms"]
        assert prop["samples"] >= 2 and prop["p99"] is not None and prop["p99"] <= 100


async def test_runtime_region_serves_from_every_worker(
    aiohttp_server: AiohttpServer, router_process: StartProcess
) -> None:
    a = await start_region(aiohttp_server, "a")
    c = await start_region(aiohttp_server, "c")
    rp = await router_process([{"id": "a", "endpoint": a.url, "weight": 0}])
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{rp.admin}/admin/regions", json={"id": "c", "endpoint": c.url}) as r:
            assert r.status == 201
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            code, region = await _get(s, f"{rp.proxy}/probe")
            if code == 200 and region == "c":
                break
            await asyncio.sleep(0.05)
        before = {w["index"]: w["requests"] for w in (await admin_status(rp, s))["workers"]}
        results = await asyncio.gather(*(_get(s, f"{rp.proxy}/x/{i}") for i in range(120)))
        assert all(code == 200 and region == "c" for code, region in results)
        await asyncio.sleep(0.6)  # one report interval (0.25 s) twice over
        after = {w["index"]: w["requests"] for w in (await admin_status(rp, s))["workers"]}
        assert all(after[i] > before[i] for i in after), (before, after)


async def test_killed_worker_is_replaced_under_load(
    aiohttp_server: AiohttpServer, router_process: StartProcess
) -> None:
    a = await start_region(aiohttp_server, "a")
    rp = await router_process([{"id": "a", "endpoint": a.url}])
    victim = rp.children()[0]
    failures = 0
    ok = 0
    kinds: list[str] = []
    stop = asyncio.Event()

    async def load(s: aiohttp.ClientSession) -> None:
        nonlocal failures, ok
        while not stop.is_set():
            try:
                code, _ = await _get(s, f"{rp.proxy}/load")
                ok += code == 200
                if code != 200:
                    failures += 1
                    kinds.append(str(code))
            except aiohttp.ClientError as exc:
                failures += 1
                kinds.append(repr(exc))

    async with aiohttp.ClientSession() as s:
        tasks = [asyncio.create_task(load(s)) for _ in range(8)]
        replaced = False
        try:
            while ok < 50:  # noqa: ASYNC110  # a count from the load tasks, polled
                await asyncio.sleep(0.05)
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                pids = rp.children()
                workers = (await admin_status(rp, s))["workers"]
                if victim not in pids and len(pids) == 2 and all(w["ready"] for w in workers):
                    replaced = True
                    break
                await asyncio.sleep(0.1)
            served = ok
            while ok < served + 50:  # noqa: ASYNC110  # traffic goes on after the replacement
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        assert replaced
        status = await admin_status(rp, s)
        assert sum(w["restarts"] for w in status["workers"]) == 1
        # Only requests in flight on the killed worker can fail: at most one per client task.
        assert failures <= 8, (failures, ok, kinds[:10])
        assert ok > 100


async def test_exits_2_when_workers_cannot_listen(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)  # a listener without SO_REUSEPORT: nobody else may bind the port
    port = taken.getsockname()[1]
    config = {
        "listen": {"proxy": f"127.0.0.1:{port}", "admin": f"127.0.0.1:{free_port()}"},
        "state_dir": str(tmp_path / "state"),
        "reload": {"watch": False},
        "regions": [],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "router",
            "run",
            "-c",
            str(path),
            "--workers",
            "2",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        taken.close()
    assert proc.returncode == 2, err.decode()
    assert b"cannot listen" in err or b"did not become ready" in err, err.decode()
