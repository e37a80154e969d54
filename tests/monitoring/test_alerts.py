"""Alerts: every rule driven from firing to resolved by real failures, with a webhook receiver.

Regions are loopback aiohttp servers that can be told to fail health checks, answer 5xx,
slow down or refuse uploads; the webhook receiver records what the router POSTs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from router.config.loader import load_config
from router.monitoring.alerts import AlertBook, webhook_payload
from router.monitoring.rules import REGION_DOWN, Condition, replication_failures
from router.service import RouterService
from tests.conftest import StartRouter, make_config

FAST_HEALTH = {
    "path": "/health",
    "interval": "100ms",
    "timeout": "80ms",
    "unhealthy_threshold": 2,
    "healthy_threshold": 1,
    "jitter": "0%",
}


class Region:
    """A region that can fail its health checks, answer 5xx, slow down or refuse uploads."""

    def __init__(self) -> None:
        self.healthy = True
        self.status = 200
        self.delay_s = 0.0
        self.accept_puts = True
        self.files: dict[str, bytes] = {"/models/m.bin": b"model-bytes" * 100}

    def app(self) -> web.Application:
        async def health(request: web.Request) -> web.Response:
            return web.Response(status=200 if self.healthy else 503, text="")

        async def any_path(request: web.Request) -> web.StreamResponse:
            if request.method == "PUT":
                if not self.accept_puts:
                    return web.Response(status=500, text="disk full")
                self.files[request.path] = await request.read()
                return web.Response(status=201)
            if request.path in self.files and request.method in ("GET", "HEAD"):
                return web.Response(body=self.files[request.path])
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return web.Response(status=self.status, text="hi")

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_route("*", "/{tail:.*}", any_path)
        return app


class Receiver:
    """A webhook endpoint; the first ``fail_first`` POSTs get a 503."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.attempts = 0
        self.payloads: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            self.attempts += 1
            if self.attempts <= self.fail_first:
                return web.Response(status=503)
            self.payloads.append(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        return app

    def seen(self, alertname: str, status: str) -> list[dict[str, Any]]:
        return [
            a
            for p in self.payloads
            for a in p["alerts"]
            if a["labels"]["alertname"] == alertname and a["status"] == status
        ]


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


class Admin:
    def __init__(self, session: aiohttp.ClientSession, service: RouterService) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{service.admin_port}"
        self.proxy = f"http://127.0.0.1:{service.proxy_port}"

    async def get(self, path: str) -> Any:
        async with self.session.get(self.base + path) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def firing(self) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
        body = await self.get("/admin/alerts")
        return {(a["alertname"], _own_labels(a)) for a in body["firing"]}

    async def wait_firing(self, name: str, /, **labels: str) -> None:
        want = (name, tuple(sorted(labels.items())))

        async def check() -> bool:
            return want in await self.firing()

        await eventually(check, what=f"{name} {labels} firing")

    async def wait_resolved(self, name: str, /, **labels: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        async def check() -> bool:
            body = await self.get("/admin/alerts")
            found[:] = [
                a
                for a in body["resolved"]
                if a["alertname"] == name and _own_labels(a) == tuple(sorted(labels.items()))
            ]
            return bool(found) and (name, tuple(sorted(labels.items()))) not in {
                (a["alertname"], _own_labels(a)) for a in body["firing"]
            }

        await eventually(check, what=f"{name} {labels} resolved")
        return found[0]


def _own_labels(alert: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    skip = {"alertname", "severity", "instance"}
    return tuple(sorted((k, v) for k, v in alert["labels"].items() if k not in skip))


def alerts_section(receiver_port: int | None = None, **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"evaluate_interval": "100ms", "window": "2s", **overrides}
    if receiver_port is not None:
        section["webhook"] = f"http://127.0.0.1:{receiver_port}/hook"
    return section


# -- rules through the whole router ----------------------------------------------------


async def test_region_tier_and_panic_alerts_fire_and_resolve(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    regions = [Region(), Region(), Region()]
    servers = [await aiohttp_server(r.app()) for r in regions]
    receiver = Receiver()
    hook = await aiohttp_server(receiver.app())
    config = make_config(
        [
            {"id": f"r{i + 1}", "endpoint": f"http://127.0.0.1:{s.port}", "priority": p}
            for i, (s, p) in enumerate(zip(servers, (0, 0, 1), strict=True))
        ],
        health_check=FAST_HEALTH,
        alerts=alerts_section(hook.port),
    )
    service = await start_router(config)
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service)
        assert await admin.firing() == set()

        regions[0].healthy = False
        await admin.wait_firing(REGION_DOWN, region="r1")
        assert ("TierDown", (("tier", "0"),)) not in await admin.firing()

        regions[1].healthy = False
        await admin.wait_firing("TierDown", tier="0")
        await admin.wait_firing(REGION_DOWN, region="r2")
        assert ("RouterPanic", ()) not in await admin.firing()  # tier 1 still serves

        regions[2].healthy = False
        await admin.wait_firing("RouterPanic")
        await admin.wait_firing("TierDown", tier="1")

        status = await admin.get("/admin/status")
        assert {a["alertname"] for a in status["firing_alerts"]} == {
            REGION_DOWN,
            "TierDown",
            "RouterPanic",
        }
        async with session.get(admin.base + "/metrics") as resp:
            text = await resp.text()
        assert 'router_alerts_firing{alert="RegionDown"} 3.0' in text
        assert 'router_alerts_firing{alert="TierDown"} 2.0' in text
        assert 'router_alerts_firing{alert="RouterPanic"} 1.0' in text
        assert 'router_alerts_firing{alert="ConfigReloadFailed"} 0.0' in text

        for r in regions:
            r.healthy = True
        panic = await admin.wait_resolved("RouterPanic")
        assert panic["ends_at"] > panic["starts_at"]
        await admin.wait_resolved("TierDown", tier="0")
        await admin.wait_resolved("TierDown", tier="1")
        for rid in ("r1", "r2", "r3"):
            await admin.wait_resolved(REGION_DOWN, region=rid)
        assert await admin.firing() == set()

        async def delivered() -> bool:
            return all(
                receiver.seen(name, "resolved") for name in (REGION_DOWN, "TierDown", "RouterPanic")
            )

        await eventually(delivered, what="resolved notifications")
    for name in (REGION_DOWN, "TierDown", "RouterPanic"):
        assert receiver.seen(name, "firing"), name
    assert len(receiver.seen(REGION_DOWN, "resolved")) >= 3
    first = receiver.payloads[0]
    assert first["version"] == "4"
    assert first["status"] == "firing"
    assert first["groupLabels"] == {"alertname": first["alerts"][0]["labels"]["alertname"]}
    alert = receiver.seen(REGION_DOWN, "firing")[0]
    assert alert["labels"]["severity"] == "critical"
    assert alert["labels"]["instance"] == service.runtime.instance_id
    assert alert["annotations"]["summary"].startswith("region r")
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["startsAt"].endswith("Z")
    resolved = receiver.seen(REGION_DOWN, "resolved")[0]
    assert resolved["endsAt"] != "0001-01-01T00:00:00Z"


async def test_error_rate_alert(aiohttp_server: AiohttpServer, start_router: StartRouter) -> None:
    region = Region()
    server = await aiohttp_server(region.app())
    receiver = Receiver()
    hook = await aiohttp_server(receiver.app())
    config = make_config(
        [{"id": "r1", "endpoint": f"http://127.0.0.1:{server.port}"}],
        health_check=FAST_HEALTH,
        outlier_detection={"consecutive_failures": 1000},  # isolate the rate rule
        alerts=alerts_section(hook.port, error_rate=0.2),
    )
    service = await start_router(config)
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service)
        region.status = 500

        async def burst() -> bool:
            for _ in range(10):
                async with session.get(admin.proxy + "/x") as resp:
                    assert resp.status == 500
            return ("RegionErrorRateHigh", (("region", "r1"),)) in await admin.firing()

        await eventually(burst, what="error-rate alert")
        body = await admin.get("/admin/alerts")
        (alert,) = [a for a in body["firing"] if a["alertname"] == "RegionErrorRateHigh"]
        assert alert["value"] == 1.0
        assert alert["severity"] == "warning"
        assert "threshold 20.0%" in alert["description"]
        region.status = 200  # healthy traffic from now on; the bad window slides out
        for _ in range(10):
            async with session.get(admin.proxy + "/x") as resp:
                assert resp.status == 200
        await admin.wait_resolved("RegionErrorRateHigh", region="r1")

        async def delivered() -> bool:
            return bool(receiver.seen("RegionErrorRateHigh", "resolved"))

        await eventually(delivered, what="resolved notification")
    assert receiver.seen("RegionErrorRateHigh", "firing")


async def test_latency_alert(aiohttp_server: AiohttpServer, start_router: StartRouter) -> None:
    region = Region()
    server = await aiohttp_server(region.app())
    config = make_config(
        [{"id": "r1", "endpoint": f"http://127.0.0.1:{server.port}"}],
        health_check=FAST_HEALTH,
        alerts=alerts_section(latency_p95="100ms"),
    )
    service = await start_router(config)
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service)
        region.delay_s = 0.3

        async def one() -> None:
            async with session.get(admin.proxy + "/slow") as resp:
                assert resp.status == 200

        async def burst() -> bool:
            await asyncio.gather(*(one() for _ in range(6)))
            return ("RegionLatencyHigh", (("region", "r1"),)) in await admin.firing()

        await eventually(burst, what="latency alert")
        body = await admin.get("/admin/alerts")
        (alert,) = [a for a in body["firing"] if a["alertname"] == "RegionLatencyHigh"]
        assert alert["value"] > 0.1
        region.delay_s = 0.0
        await admin.wait_resolved("RegionLatencyHigh", region="r1")


async def test_reload_failed_alert(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    region = Region()
    server = await aiohttp_server(region.app())
    receiver = Receiver()
    hook = await aiohttp_server(receiver.app())
    data: dict[str, Any] = {
        "listen": {"proxy": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "access_log": False,
        "reload": {"watch": False},
        "state_dir": str(tmp_path / "state"),
        "regions": [{"id": "r1", "endpoint": f"http://127.0.0.1:{server.port}"}],
        "health_check": FAST_HEALTH,
        "alerts": alerts_section(hook.port),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    service = await start_router(load_config(str(path)), config_path=str(path))
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service)
        path.write_text(path.read_text().replace("health_check:", "health_chek:"))
        async with session.post(admin.base + "/admin/reload") as resp:
            assert resp.status == 400
        await admin.wait_firing("ConfigReloadFailed")
        body = await admin.get("/admin/alerts")
        (alert,) = body["firing"]
        assert "health_chek" in alert["description"]

        path.write_text(yaml.safe_dump(data))
        async with session.post(admin.base + "/admin/reload") as resp:
            assert resp.status == 200
        await admin.wait_resolved("ConfigReloadFailed")

        async def delivered() -> bool:
            return bool(receiver.seen("ConfigReloadFailed", "resolved"))

        await eventually(delivered, what="resolved notification")


async def test_replication_failed_alert(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    source, target = Region(), Region()
    src = await aiohttp_server(source.app())
    dst = await aiohttp_server(target.app())
    config = make_config(
        [
            {"id": "src", "endpoint": f"http://127.0.0.1:{src.port}"},
            {"id": "dst", "endpoint": f"http://127.0.0.1:{dst.port}"},
        ],
        health_check=FAST_HEALTH,
        replication={"attempts": 1, "backoff_base": "10ms"},
        alerts=alerts_section(),
    )
    service = await start_router(config)
    job = {"kind": "model", "name": "m", "path": "/models/m.bin", "source": "src"}
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service)
        if not hasattr(service.control, "replication"):
            pytest.skip("replication engine not wired into this build")
        target.accept_puts = False
        async with session.post(
            admin.base + "/admin/replications", json={**job, "targets": ["dst"]}
        ) as resp:
            assert resp.status == 202, await resp.text()
        await admin.wait_firing("ReplicationJobFailed", kind="model", name="m")
        body = await admin.get("/admin/alerts")
        (alert,) = body["firing"]
        assert "dst" in alert["description"]

        target.accept_puts = True
        async with session.post(
            admin.base + "/admin/replications", json={**job, "targets": ["dst"]}
        ) as resp:
            assert resp.status == 202, await resp.text()
        await admin.wait_resolved("ReplicationJobFailed", kind="model", name="m")


async def test_webhook_retries_until_delivered(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region = Region()
    server = await aiohttp_server(region.app())
    receiver = Receiver(fail_first=2)
    hook = await aiohttp_server(receiver.app())
    config = make_config(
        [{"id": "r1", "endpoint": f"http://127.0.0.1:{server.port}"}],
        health_check=FAST_HEALTH,
        alerts=alerts_section(hook.port),
    )
    service = await start_router(config)
    service.control.alerts.notifier.backoff_base_s = 0.02
    async with aiohttp.ClientSession() as session:
        admin = Admin(session, service)
        region.healthy = False
        await admin.wait_firing(REGION_DOWN, region="r1")

        async def delivered() -> bool:
            names = {p["groupLabels"]["alertname"] for p in receiver.payloads}
            return names == {REGION_DOWN, "TierDown", "RouterPanic"}

        await eventually(delivered, what="delivery after retries")
        body = await admin.get("/admin/alerts")
    # RegionDown, TierDown and RouterPanic (the only region is down): 3 bodies, 2 retries
    assert receiver.attempts == len(receiver.payloads) + 2
    assert receiver.seen(REGION_DOWN, "firing")
    assert body["webhook"]["sent"] >= 1
    assert body["webhook"]["retries"] == 2
    assert body["webhook"]["target"] == f"http://127.0.0.1:{hook.port}"  # path not shown


# -- the pure parts --------------------------------------------------------------------


def _cond(name: str, **labels: str) -> Condition:
    return Condition(
        name=name,
        labels=tuple(sorted(labels.items())),
        severity="warning",
        summary=f"{name} {labels}",
        description="",
    )


def test_book_keeps_start_time_and_bounds_resolved_history() -> None:
    book = AlertBook(keep_resolved=3, static_labels={"instance": "i1"})
    changed = book.update([_cond("A", region="x")], now=10.0)
    assert [a.starts_at for a in changed] == [10.0]
    assert book.update([_cond("A", region="x")], now=11.0) == []
    assert book.firing[_cond("A", region="x").key].starts_at == 10.0
    (resolved,) = book.update([], now=12.0)
    assert (resolved.starts_at, resolved.ends_at, resolved.firing) == (10.0, 12.0, False)
    for i in range(5):
        book.update([_cond("B", n=str(i))], now=20.0 + i)
    book.update([], now=30.0)
    assert len(book.resolved) == 3
    assert repr(book) == "<AlertBook firing=0 resolved=3>"
    assert "A" not in book.counts()  # counts cover the router's own alert names
    assert set(book.counts().values()) == {0}


def test_for_holds_an_alert_pending_until_its_condition_lasted() -> None:
    book = AlertBook(static_labels={"instance": "i1"})
    blip = _cond("A", region="x")
    assert book.update([blip], now=10.0, for_s=5.0) == []  # pending
    assert book.pending == {blip.key: 10.0}
    assert book.update([], now=12.0, for_s=5.0) == []  # a blip: never fires
    assert book.pending == {} and book.firing == {}
    assert book.update([blip], now=20.0, for_s=5.0) == []
    assert book.update([blip], now=24.9, for_s=5.0) == []
    (fired,) = book.update([blip], now=25.0, for_s=5.0)
    assert fired.firing and fired.starts_at == 25.0 and book.pending == {}


def test_webhook_payload_is_alertmanager_shaped() -> None:
    book = AlertBook(static_labels={"instance": "i1"})
    book.update([_cond("A", region="x"), _cond("A", region="y")], now=1_700_000_000.0)
    (gone,) = [a for a in book.update([_cond("A", region="y")], now=1_700_000_060.5)]
    body = webhook_payload(
        "A",
        [*book.firing.values(), gone],
        receiver="region-router",
        external_url="http://h:1",
    )
    assert body["status"] == "firing"
    assert body["commonLabels"] == {"alertname": "A", "instance": "i1", "severity": "warning"}
    assert body["groupKey"] == '{}:{alertname="A"}'
    statuses = {a["labels"]["region"]: a for a in body["alerts"]}
    assert statuses["y"]["status"] == "firing"
    assert statuses["x"]["status"] == "resolved"
    assert statuses["x"]["startsAt"] == "2023-11-14T22:13:20.000Z"
    assert statuses["x"]["endsAt"] == "2023-11-14T22:14:20.500Z"
    assert len(statuses["x"]["fingerprint"]) == 16


def test_replication_failures_follow_the_latest_finished_job() -> None:
    def job(i: str, name: str, state: str, at: float | None) -> SimpleNamespace:
        return SimpleNamespace(
            id=i, kind="model", name=name, state=state, finished_at=at, error="boom"
        )

    jobs = {
        "1": job("1", "m", "failed", 100.0),
        "2": job("2", "m", "succeeded", 200.0),  # fixed by a later success
        "3": job("3", "n", "succeeded", 100.0),
        "4": job("4", "n", "failed", 150.0),
        "5": job("5", "n", "running", None),  # a retry in progress does not resolve it
        "6": job("6", "o", "cancelled", 300.0),
    }
    engine = SimpleNamespace(jobs=jobs)
    (failure,) = replication_failures(engine, now=300.0)
    assert (failure.job_id, failure.name, failure.error) == ("4", "n", "boom")
    assert replication_failures(engine, now=150.0 + 3601) == ()  # held for an hour at most
    assert replication_failures(None, now=0.0) == ()
