"""Admin routes for the whole router: status, effective config, reload."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from admin.bodies import json_response
from admin.keys import CONTROL
from admin.views import operation_json, region_json
from router import __version__
from router.config.loader import redacted_dict
from router.control.core import Control

routes = web.RouteTableDef()

# Extra sections of /admin/status, contributed by other features (alerts, replication...).
STATUS_EXTRAS = web.AppKey("status_extras", list[Callable[[], dict[str, Any]]])


def status_data(control: Control, extras: list[Callable[[], dict[str, Any]]]) -> dict[str, Any]:
    """The global status document (shared with /api/multi-region)."""
    runtime = control.runtime
    snap = control.registry.snapshot()
    stats = runtime.merged_stats()
    totals: dict[str, int] = {"requests": 0, "errors_5xx": 0}
    for (_region, _method, code), n in stats.requests.items():
        totals["requests"] += n
        if code.startswith("5"):
            totals["errors_5xx"] += n
    body: dict[str, Any] = {
        "version": __version__,
        "instance_id": runtime.instance_id,
        "uptime_s": round(time.time() - runtime.started_wall, 3),
        "strategy": snap.config.strategy,
        "config_hash": snap.config.config_hash,
        "snapshot_version": snap.version,
        "panic": snap.panic,
        "ready": runtime.ready(),
        "regions": [region_json(control, r) for r in snap.regions],
        "totals": totals,
        "retries": dict(stats.retries),
        "active_operations": [operation_json(op) for op in control.ops.active.values()],
        "last_reload": control.last_reload.to_json() if control.last_reload else None,
        "state_problems": [
            {"at": p.at, "kind": p.kind, "message": p.message, "moved_to": p.moved_to}
            for p in control.store.problems
        ],
    }
    for extra in extras:
        body.update(extra())
    return body


@routes.get("/admin/status")
async def status(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    return json_response(status_data(control, request.app.get(STATUS_EXTRAS, [])))


@routes.get("/admin/config")
async def get_config(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    cfg = control.registry.config
    resp = json_response(
        {"config_hash": cfg.config_hash, "path": control.config_path, "config": redacted_dict(cfg)}
    )
    resp.headers["ETag"] = f'"{cfg.config_hash}"'
    return resp


@routes.post("/admin/reload")
async def reload(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    result = await control.reload("api")
    body = result.to_json()
    if not result.ok:
        return json_response(
            {
                "error": {
                    "code": "invalid_config",
                    "message": "config rejected; the old config keeps serving: "
                    + "; ".join(str(e) for e in result.errors),
                    "details": body.get("errors", []),
                },
                **body,
            },
            status=400,
        )
    return json_response(body)
