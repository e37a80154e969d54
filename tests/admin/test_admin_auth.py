"""The admin token: required everywhere but /healthz, /readyz (and /metrics when public),
compared in constant time, and a non-loopback admin listener without one is refused."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from pytest_aiohttp import AiohttpServer

from router.config.loader import load_config
from tests.admin.client import Admin, steady_config
from tests.backends import free_ports, run_cli, start_region, write_config
from tests.conftest import StartRouter

TOKEN = "t0ken-with-enough-entropy"
PROTECTED = [
    ("GET", "/admin/status"),
    ("GET", "/admin/regions"),
    ("POST", "/admin/regions"),
    ("GET", "/admin/regions/r1"),
    ("POST", "/admin/regions/r1/failover"),
    ("GET", "/admin/failover"),
    ("GET", "/admin/route?path=/"),
    ("GET", "/admin/config"),
    ("POST", "/admin/reload"),
    ("POST", "/admin/simulate"),
    ("GET", "/admin/no-such-path"),  # 401, not 404: unauthenticated callers learn nothing
]


async def test_every_admin_path_needs_the_token(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    service = await start_router(steady_config([r1.config()], admin={"token": TOKEN}))
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        for method, path in PROTECTED:
            for token in ("", "wrong", TOKEN + "x", TOKEN[:-1]):
                reply = await admin.call(method, path, token=token)
                assert reply.status == 401, (method, path, token, reply)
                assert reply.body["error"]["code"] == "unauthorized"
                assert reply.headers["WWW-Authenticate"].startswith("Bearer")
        reply = await admin.call("GET", "/admin/status", headers={"Authorization": TOKEN})
        assert reply.status == 401  # the scheme is part of it
        compat = await admin.get("/api/multi-region?operation=global-status")
        assert compat.status == 401
        assert compat.body["success"] is False and "token" in compat.body["error"]
        for path in ("/healthz", "/readyz"):
            assert (await admin.get(path)).status == 200
        assert (await admin.get("/metrics")).status == 401
        authed = Admin(session, service.admin_port, token=TOKEN)
        assert (await authed.get("/admin/status")).status == 200
        assert (await authed.get("/metrics")).status == 200
        assert (await authed.get("/api/multi-region?operation=global-status")).status == 200


async def test_public_metrics_opens_only_metrics(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    config = steady_config([r1.config()], admin={"token": TOKEN, "public_metrics": True})
    service = await start_router(config)
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        metrics = await admin.get("/metrics")
        assert metrics.status == 200 and "router_region_up" in metrics.body
        assert (await admin.get("/admin/status")).status == 401


async def test_no_token_means_open_on_loopback(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    service = await start_router(steady_config([r1.config()]))
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service.admin_port)
        assert (await admin.get("/admin/status")).status == 200
        assert (await admin.get("/metrics")).status == 200


async def test_a_reload_that_changes_the_token_applies_at_once(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    r1 = await start_region(aiohttp_server, "r1")
    path = tmp_path / "config.yaml"
    data = {
        "listen": {"proxy": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "state_dir": str(tmp_path / "state"),
        "reload": {"watch": False},
        "admin": {"token": TOKEN},
        "regions": [r1.config()],
    }
    write_config(path, data)
    service = await start_router(load_config(path), config_path=str(path))
    async with aiohttp.ClientSession() as session:
        old = Admin(session, service.admin_port, token=TOKEN)
        write_config(path, {**data, "admin": {"token": "rotated"}})
        reply = await old.post("/admin/reload")
        assert reply.status == 200, reply
        assert reply.body["diff"]["settings"] == {"admin": "changed (redacted)"}
        assert "rotated" not in str(reply.body)
        assert (await old.get("/admin/status")).status == 401
        new = Admin(session, service.admin_port, token="rotated")
        assert (await new.get("/admin/status")).status == 200


async def test_run_refuses_a_non_loopback_admin_without_a_token(tmp_path: Path) -> None:
    proxy, admin = free_ports(2)
    config = write_config(
        tmp_path / "config.yaml",
        {
            "listen": {"proxy": f"127.0.0.1:{proxy}", "admin": f"0.0.0.0:{admin}"},
            "state_dir": str(tmp_path / "state"),
            "regions": [{"id": "r1", "endpoint": "http://127.0.0.1:9"}],
        },
    )
    code, _, err = await run_cli("run", "-c", str(config), cwd=tmp_path)
    assert code == 1
    assert "listen.admin" in err and "token" in err
