"""The real CLI in a subprocess: graceful SIGTERM, ``check`` exit codes, a busy port."""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
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
