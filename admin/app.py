"""The admin HTTP application (aiohttp): health, readiness, metrics, and the admin API."""

from __future__ import annotations

import hmac

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from admin import compat, explain, monitoring, regions, replication, status
from admin.errors import Handler, error_middleware, json_error
from admin.keys import CONTROL, RUNTIME
from admin.status import STATUS_EXTRAS
from router.control.core import Control

OPEN_PATHS = frozenset({"/healthz", "/readyz", monitoring.DASHBOARD_PATH})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer token from the live config (a reload that changes it applies at once)."""
    admin = request.app[RUNTIME].registry.config.admin
    token = admin.token
    if not token or request.path in OPEN_PATHS:
        return await handler(request)
    if request.path == "/metrics" and admin.public_metrics:
        return await handler(request)
    given = request.headers.get("Authorization", "")
    expected = f"Bearer {token}"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        message = "missing or wrong bearer token (Authorization: Bearer <admin.token>)"
        if request.path == compat.PATH:
            resp = compat.envelope_error(401, message, "unauthorized")
        else:
            resp = json_error(401, "unauthorized", message)
        resp.headers["WWW-Authenticate"] = 'Bearer realm="region-router"'
        return resp
    return await handler(request)


_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@web.middleware
async def propagation_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A 2xx to a change is sent only once every worker routes by the new snapshot."""
    response = await handler(request)
    if request.method in _MUTATING and 200 <= response.status < 300:
        await request.app[RUNTIME].propagated()
    return response


async def healthz(request: web.Request) -> web.StreamResponse:
    # "instance" tells which process answered (behind a balancer, or a port taken by another).
    return web.json_response({"status": "ok", "instance": request.app[RUNTIME].instance_id})


async def readyz(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    first_round = runtime.health.first_round.is_set()
    ready = first_round and runtime.ready()
    eligible = [r.id for r in runtime.holder.current.regions if r.eligible]
    body = {
        "ready": ready,
        "first_round_done": first_round,
        "eligible": eligible,
        "instance": runtime.instance_id,
    }
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    payload = generate_latest(runtime.metrics)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(control: Control) -> web.Application:
    runtime = control.runtime
    app = web.Application(
        middlewares=[error_middleware, auth_middleware, propagation_middleware],
        client_max_size=runtime.registry.config.admin.max_body_bytes,
    )
    app[RUNTIME] = runtime
    app[CONTROL] = control
    app[STATUS_EXTRAS] = []
    app.router.add_routes(regions.routes)
    app.router.add_routes(status.routes)
    monitoring.setup(app)
    app.router.add_routes(explain.routes)
    compat.setup(app)
    replication.setup(app)  # after compat.setup: it plugs replicate-model in
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app
