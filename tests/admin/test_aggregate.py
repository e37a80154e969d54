"""GET /admin/metrics/aggregate: regions' own Prometheus metrics summed, beside the router's view.

Regions are real loopback servers exposing their own prometheus-client registries; one
answers 404 on its metrics path, one is not listening, one is too slow, one has no
``metrics_path`` at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pytest_aiohttp import AiohttpServer

from tests.conftest import StartRouter, make_config

TOKEN = "s3cret-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def region_metrics(
    requests_ok: int, requests_err: int, queue: float, latencies: list[float]
) -> bytes:
    reg = CollectorRegistry()
    c = Counter("app_requests", "requests", ["code"], registry=reg)
    c.labels("200").inc(requests_ok)
    if requests_err:
        c.labels("500").inc(requests_err)
    Gauge("app_queue_depth", "queue", registry=reg).set(queue)
    h = Histogram("app_latency_seconds", "latency", buckets=(0.1, 1.0), registry=reg)
    for x in latencies:
        h.observe(x)
    return generate_latest(reg)


def region_app(metrics: Callable[[], bytes] | None, *, delay_s: float = 0.0) -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def serve_metrics(request: web.Request) -> web.Response:
        if delay_s:
            await asyncio.sleep(delay_s)
        if metrics is None:
            raise web.HTTPNotFound()
        return web.Response(body=metrics(), content_type="text/plain")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def test_aggregate_sums_regions_and_lists_unscrapeable(
    aiohttp_server: AiohttpServer, start_router: StartRouter, unused_tcp_port: int
) -> None:
    a = await aiohttp_server(region_app(lambda: region_metrics(10, 2, 3, [0.05, 0.5])))
    b = await aiohttp_server(region_app(lambda: region_metrics(5, 0, 4.5, [0.05, 2.0, 3.0])))
    no_metrics = await aiohttp_server(region_app(None))
    slow = await aiohttp_server(region_app(lambda: region_metrics(1, 0, 1, []), delay_s=5.0))
    plain = await aiohttp_server(region_app(None))

    def region(rid: str, port: int, metrics: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"id": rid, "endpoint": f"http://127.0.0.1:{port}"}
        if metrics:
            out["metrics_path"] = "/metrics"
        return out

    config = make_config(
        [
            region("a", a.port),
            region("b", b.port),
            region("nometrics", no_metrics.port),
            region("gone", unused_tcp_port),  # nothing listens there
            region("slow", slow.port),
            region("plain", plain.port, metrics=False),
        ],
        admin={"token": TOKEN},
    )
    service = await start_router(config)
    admin = f"http://127.0.0.1:{service.admin_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{admin}/admin/metrics/aggregate") as resp:
            assert resp.status == 401  # behind the token like the rest of the admin API
        url = f"{admin}/admin/metrics/aggregate?timeout=500ms"
        async with session.get(url, headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()

    sums = body["sums"]
    assert sums['app_requests_total{code="200"}'] == 15
    assert sums['app_requests_total{code="500"}'] == 2  # only region a reports it
    assert sums["app_queue_depth"] == 7.5
    assert sums['app_latency_seconds_bucket{le="0.1"}'] == 2
    assert sums['app_latency_seconds_bucket{le="1.0"}'] == 3
    assert sums['app_latency_seconds_bucket{le="+Inf"}'] == 5
    assert sums["app_latency_seconds_count"] == 5
    assert abs(sums["app_latency_seconds_sum"] - 5.6) < 1e-9
    families = {f["name"]: f for f in body["families"]}
    assert families["app_requests"]["type"] == "counter"
    assert families["app_requests"]["regions"] == ["a", "b"]
    assert families["app_queue_depth"]["type"] == "gauge"

    assert sorted(s["region"] for s in body["scraped"]) == ["a", "b"]
    bad = {u["region"]: u for u in body["unscrapeable"]}
    assert set(bad) == {"nometrics", "gone", "slow"}
    assert bad["nometrics"]["error"] == "status 404"
    assert bad["nometrics"]["status"] == 404
    assert bad["gone"]["error"]  # connection refused, named
    assert bad["gone"]["url"] == f"http://127.0.0.1:{unused_tcp_port}/metrics"
    assert bad["slow"]["error"].startswith("timeout")
    assert body["not_configured"] == ["plain"]
    # scraped concurrently: the slow region's timeout bounds the whole call
    assert body["scrape_duration_ms"] < 2000


async def test_router_view_counts_proxied_requests(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    a = await aiohttp_server(region_app(lambda: region_metrics(1, 0, 0, [])))
    b = await aiohttp_server(region_app(lambda: region_metrics(1, 0, 0, [])))
    config = make_config(
        [
            {"id": "a", "endpoint": f"http://127.0.0.1:{a.port}", "metrics_path": "/metrics"},
            {"id": "b", "endpoint": f"http://127.0.0.1:{b.port}"},
        ]
    )
    service = await start_router(config)
    admin = f"http://127.0.0.1:{service.admin_port}"
    proxy = f"http://127.0.0.1:{service.proxy_port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(20):
            async with session.get(f"{proxy}/x") as resp:
                assert resp.status == 200
        view: dict[str, Any] = {}
        for _ in range(60):  # the traffic window samples once a second
            async with session.get(f"{admin}/admin/metrics/aggregate?window=30s") as resp:
                view = (await resp.json())["router"]
            if view["totals"]["requests"] == 20:
                break
            await asyncio.sleep(0.1)
        assert view["window_s"] == 30
        assert view["totals"]["requests"] == 20
        assert view["since_start"]["requests"] == 20
        per_region = {r["region"]: r for r in view["regions"]}
        assert per_region["a"]["requests"] + per_region["b"]["requests"] == 20
        assert per_region["a"]["requests"] == 10  # round robin
        assert per_region["a"]["errors"] == 0
        assert per_region["a"]["latency_ms"]["p95"] is not None

        async with session.get(f"{admin}/admin/metrics/aggregate?window=nope") as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "invalid"


async def test_compat_aggregate_metrics(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    a = await aiohttp_server(region_app(lambda: region_metrics(3, 0, 1, [])))
    config = make_config(
        [{"id": "a", "endpoint": f"http://127.0.0.1:{a.port}", "metrics_path": "/metrics"}]
    )
    service = await start_router(config)
    url = f"http://127.0.0.1:{service.admin_port}/api/multi-region"
    async with aiohttp.ClientSession() as session:
        body = {"operation": "aggregate-metrics", "timeRange": 120000}
        async with session.post(url, json=body) as resp:
            assert resp.status == 200, await resp.text()
            reply = await resp.json()
        assert reply["success"] is True
        assert reply["data"]["router"]["window_s"] == 120
        assert reply["data"]["sums"]['app_requests_total{code="200"}'] == 3
        async with session.post(
            url, json={"operation": "aggregate-metrics", "timeRange": "x"}
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["success"] is False
        async with session.get(url, params={"operation": "global-dashboard"}) as resp:
            assert resp.status == 200
            data = (await resp.json())["data"]
            assert [r["id"] for r in data["regions"]] == ["a"]
            assert "series" in data["regions"][0]
