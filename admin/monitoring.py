"""Monitoring routes: aggregated metrics, alerts, and the live dashboard (page and data)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import Any

import aiohttp
from aiohttp import web

from admin import compat
from admin.bodies import check, json_response
from admin.dashboard import dashboard_json
from admin.keys import CONTROL
from admin.status import STATUS_EXTRAS
from admin.views import ms
from router.config.validate import FieldError, ValidationError, as_duration
from router.control.core import Control
from router.monitoring.scrape import aggregate

routes = web.RouteTableDef()

SCRAPE_SESSION = web.AppKey("scrape_session", aiohttp.ClientSession)
DEFAULT_SCRAPE_TIMEOUT_S = 3.0
MAX_SCRAPE_TIMEOUT_S = 30.0
DEFAULT_WINDOW_S = 60.0
MAX_WINDOW_S = 600.0  # what the traffic window keeps
DASHBOARD_PATH = "/admin/dashboard"  # served without the token: the data it polls needs it


def router_view(control: Control, window_s: float) -> dict[str, Any]:
    """The router's own per-region traffic over ``window_s``, from its counters."""
    snap = control.registry.snapshot()
    regions = []
    total_n = total_err = 0
    total_rps = 0.0
    for r in snap.regions:
        t = control.window.region(r.id, window_s)
        total_n += t.requests
        total_err += t.errors
        total_rps += t.rps
        regions.append(
            {
                "region": r.id,
                "state": r.state.value,
                "requests": t.requests,
                "rps": round(t.rps, 3),
                "errors": t.errors,
                "error_rate": round(t.error_rate, 4),
                "latency_ms": {
                    "p50": ms(t.p50_s),
                    "p95": ms(t.p95_s),
                    "p99": ms(t.p99_s),
                },
            }
        )
    stats = control.runtime.merged_stats()
    cumulative = errors_5xx = 0
    for (_region, _method, code), n in stats.requests.items():
        cumulative += n
        if code.startswith("5"):
            errors_5xx += n
    return {
        "window_s": window_s,
        "regions": regions,
        "totals": {
            "requests": total_n,
            "errors": total_err,
            "error_rate": round(total_err / total_n, 4) if total_n else 0.0,
            "rps": round(total_rps, 3),
        },
        "since_start": {"requests": cumulative, "errors_5xx": errors_5xx},
    }


async def aggregate_metrics(
    app: web.Application, *, window_s: float, timeout_s: float = DEFAULT_SCRAPE_TIMEOUT_S
) -> dict[str, Any]:
    """The body of GET /admin/metrics/aggregate (also the compat ``aggregate-metrics``)."""
    control = app[CONTROL]
    window_s = min(max(window_s, 1.0), MAX_WINDOW_S)
    snap = control.registry.snapshot()
    started = time.monotonic()
    scraped = await aggregate(app[SCRAPE_SESSION], snap.regions, timeout_s)
    return {
        "generated_at": time.time(),
        "scrape_duration_ms": round((time.monotonic() - started) * 1000.0, 3),
        **scraped,
        "router": router_view(control, window_s),
    }


@routes.get("/admin/metrics/aggregate")
async def get_aggregate(request: web.Request) -> web.StreamResponse:
    errors: list[FieldError] = []
    window_s = _duration(request, "window", DEFAULT_WINDOW_S, MAX_WINDOW_S, errors)
    timeout_s = _duration(
        request, "timeout", DEFAULT_SCRAPE_TIMEOUT_S, MAX_SCRAPE_TIMEOUT_S, errors
    )
    check(errors)
    return json_response(
        await aggregate_metrics(request.app, window_s=window_s, timeout_s=timeout_s)
    )


@routes.get("/admin/alerts")
async def get_alerts(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[CONTROL].alerts.to_json())


@routes.get("/admin/dashboard.json")
async def get_dashboard_json(request: web.Request) -> web.StreamResponse:
    return json_response(dashboard_json(request.app[CONTROL]))


@routes.get(DASHBOARD_PATH)
async def get_dashboard(request: web.Request) -> web.StreamResponse:
    page = files("admin").joinpath("static/dashboard.html").read_bytes()
    return web.Response(
        body=page,
        content_type="text/html",
        charset="utf-8",
        headers={
            "Cache-Control": "no-store",
            # Everything is inline; the page only talks to this origin.
            "Content-Security-Policy": (
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                "frame-ancestors 'none'"
            ),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def _duration(
    request: web.Request, name: str, default: float, most: float, errors: list[FieldError]
) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = as_duration()(raw)
    except ValueError as exc:
        errors.append(FieldError(name, str(exc)))
        return default
    if value > most:
        errors.append(FieldError(name, f"at most {most:g}s"))
    return value


async def _scrape_session(app: web.Application) -> AsyncIterator[None]:
    app[SCRAPE_SESSION] = aiohttp.ClientSession(
        auto_decompress=True, connector=aiohttp.TCPConnector(limit=32)
    )
    yield
    await app[SCRAPE_SESSION].close()


# -- the compatibility endpoint's operations ---------------------------------------------


async def compat_aggregate_metrics(request: web.Request, params: dict[str, Any]) -> Any:
    """POST ``aggregate-metrics``: ``timeRange`` (ms) is the router view's window."""
    raw = params.get("timeRange", DEFAULT_WINDOW_S * 1000.0)
    try:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ValueError
        window_ms = float(raw)
    except ValueError:
        window_ms = -1.0
    if not 0 < window_ms < float("inf"):
        raise ValidationError([FieldError("timeRange", f"expected milliseconds > 0, got {raw!r}")])
    return await aggregate_metrics(request.app, window_s=window_ms / 1000.0)


async def compat_global_dashboard(request: web.Request, params: dict[str, Any]) -> Any:
    return dashboard_json(request.app[CONTROL])


async def _register_compat(app: web.Application) -> None:
    # At start-up, so it does not matter whether compat.setup ran before or after us.
    if compat.HANDLERS in app:
        compat.register(app, "POST", "aggregate-metrics", compat_aggregate_metrics)
        compat.register(app, "GET", "global-dashboard", compat_global_dashboard)


def setup(app: web.Application) -> None:
    """Register the monitoring routes, the scrape session, compat operations and firing
    alerts in status."""
    control = app[CONTROL]
    app.router.add_routes(routes)
    app.cleanup_ctx.append(_scrape_session)
    app.on_startup.append(_register_compat)
    extras = app.setdefault(STATUS_EXTRAS, [])
    extras.append(lambda: {"firing_alerts": control.alerts.firing_json()})
