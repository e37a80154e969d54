"""The real CLI in a subprocess: graceful SIGTERM, ``check`` exit codes, a busy port."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pytest_aiohttp import AiohttpServer

from tests.backends import Region, free_ports, router_process, run_cli, start_region, write_config


def _config(region: Region, **extra: Any) -> dict[str, Any]:
    return {
        "strategy": "round_robin",
        "health_check": {"path": "/health", "interval": "200ms", "timeout": "150ms"},
        "regions": [region.config()],
        **extra,
    }


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    region = await start_region(aiohttp_server)
    async with (
        router_process(tmp_path, _config(region)) as router,
        aiohttp.ClientSession() as session,
    ):
        url = f"http://127.0.0.1:{router.proxy_port}/delay/1.5"
        slow = asyncio.create_task(session.get(url))
        async with asyncio.timeout(10):
            await region.arrived.wait()
        router.process.send_signal(signal.SIGTERM)
        # the listener closes at once: new connections are refused while the slow one runs
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while not await _refused(router.proxy_port):
            assert loop.time() < deadline, "proxy still accepting after SIGTERM"
            await asyncio.sleep(0.02)
        assert not slow.done()
        async with asyncio.timeout(10):
            resp = await slow
        async with resp:
            assert resp.status == 200
            assert (await resp.json())["raw_path"] == "/delay/1.5"
        assert await router.wait_exit(10) == 0, router.log()
    assert not region.cancelled.is_set()


async def test_check_exit_codes(tmp_path: Path) -> None:
    good = write_config(
        tmp_path / "good.yaml",
        {"regions": [{"id": "r1", "endpoint": "http://127.0.0.1:9"}]},
    )
    code, out, _ = await run_cli("check", "-c", str(good), cwd=tmp_path)
    assert code == 0
    assert out.startswith("OK")
    bad = write_config(
        tmp_path / "bad.yaml",
        {
            "regions": [{"id": "r1", "endpoint": "ftp://x"}],
            "timeouts": {"connect": "-1s"},
            "typo_key": 1,
        },
    )
    code, _, err = await run_cli("check", "-c", str(bad), cwd=tmp_path)
    assert code == 1
    assert "regions[0].endpoint" in err
    assert "timeouts.connect" in err
    assert "typo_key" in err


async def test_run_exits_2_when_the_proxy_port_is_taken(tmp_path: Path) -> None:
    proxy, admin = free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", proxy))
        taken.listen(1)
        config = {
            "listen": {"proxy": f"127.0.0.1:{proxy}", "admin": f"127.0.0.1:{admin}"},
            "regions": [{"id": "r1", "endpoint": "http://127.0.0.1:9"}],
        }
        async with router_process(tmp_path, config, ready=False) as router:
            assert await router.wait_exit(30) == 2, router.log()


async def test_access_log_is_one_json_line_per_request(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    region = await start_region(aiohttp_server)
    async with (
        router_process(tmp_path, _config(region, access_log=True)) as router,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{router.proxy_port}"
        async with session.get(f"{base}/a?x=1", headers={"X-Request-ID": "rid-1"}) as resp:
            assert resp.status == 200
        async with session.post(f"{base}/b", data=b"hello") as resp:
            assert resp.status == 200
        router.process.send_signal(signal.SIGTERM)  # flushes the buffered log
        assert await router.wait_exit(10) == 0, router.log()
    lines = [orjson.loads(ln) for ln in router.log().splitlines() if ln.startswith("{")]
    by_target = {line["target"]: line for line in lines}
    first, second = by_target["/a?x=1"], by_target["/b"]
    assert first["request_id"] == "rid-1" and first["method"] == "GET"
    assert first["status"] == 200 and first["region"] == "r1" and first["attempts"] == 1
    assert first["client"] == "127.0.0.1" and first["duration_ms"] >= 0
    assert second["method"] == "POST" and second["status"] == 200
    assert len(lines) == 2  # health probes are not proxied requests


async def test_workers_reload_once_on_sighup_and_drain_on_sigterm(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    a = await start_region(aiohttp_server, "a")
    b = await start_region(aiohttp_server, "b")
    config: dict[str, Any] = {
        "strategy": "round_robin",
        "health_check": {"path": "/health", "interval": "200ms", "timeout": "150ms"},
        "regions": [a.config(), b.config()],
        "state_dir": str(tmp_path / "state"),
        "reload": {"watch": False},
        "access_log": False,
    }
    async with (
        router_process(tmp_path, config, workers=2) as router,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{router.proxy_port}"

        async def regions_seen(n: int) -> set[str]:
            seen = set()
            for i in range(n):
                async with session.get(f"{base}/x/{i}", headers={"Connection": "close"}) as r:
                    assert r.status == 200
                    seen.add(r.headers["X-Router-Region"])
            return seen

        assert await regions_seen(20) == {"a", "b"}
        config["regions"] = [a.config(weight=0), b.config()]
        write_config(tmp_path / "config.yaml", {**config, "listen": _listen(router)})
        router.process.send_signal(signal.SIGHUP)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while await regions_seen(10) != {"b"}:
            assert loop.time() < deadline, "reload did not reach the workers"
        assert await regions_seen(40) == {"b"}  # every worker routes by the new config
        assert router.log().count("config reloaded") == 1
        # SIGTERM: every worker finishes its request in flight, then the supervisor exits 0.
        b.arrived.clear()  # set by every request: wait for the slow one's arrival
        slow = asyncio.create_task(session.get(f"{base}/delay/1"))
        async with asyncio.timeout(10):
            await b.arrived.wait()
        router.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            resp = await slow
        async with resp:
            assert resp.status == 200
        assert await router.wait_exit(15) == 0, router.log()


def _listen(router: Any) -> dict[str, str]:
    return {
        "proxy": f"127.0.0.1:{router.proxy_port}",
        "admin": f"127.0.0.1:{router.admin_port}",
    }


async def test_healthz_and_readyz_name_the_instance_that_answered(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    region = await start_region(aiohttp_server)
    named = _config(region, instance_id="edge-7")
    (tmp_path / "named").mkdir()
    (tmp_path / "default").mkdir()
    async with (
        router_process(tmp_path / "named", named) as router,
        router_process(tmp_path / "default", _config(region)) as unnamed,
        aiohttp.ClientSession() as session,
    ):
        for path in ("/healthz", "/readyz"):
            async with session.get(f"{router.admin}{path}") as resp:
                assert resp.status == 200
                assert (await resp.json())["instance"] == "edge-7"
        async with session.get(f"{unnamed.admin}/readyz") as resp:
            expected = f"{socket.gethostname()}:{unnamed.proxy_port}"  # the documented default
            assert (await resp.json())["instance"] == expected


async def test_ready_means_this_process_answered_not_whoever_holds_the_port(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    # A router whose admin port another router already holds exits at start; until it
    # does, that other router answers /readyz on the port. Taking that answer for this
    # router's readiness hid such a collision once (tests/cluster, fifth session).
    region = await start_region(aiohttp_server)
    (tmp_path / "first").mkdir()
    async with router_process(tmp_path / "first", _config(region)) as first:
        (proxy_port,) = free_ports(1)
        listen = {"proxy": f"127.0.0.1:{proxy_port}", "admin": f"127.0.0.1:{first.admin_port}"}
        (tmp_path / "second").mkdir()
        # Its own exit is seen; the first router's 200 on the port does not count.
        with pytest.raises(AssertionError, match="router exited 2"):
            async with router_process(tmp_path / "second", _config(region, listen=listen)):
                pass
