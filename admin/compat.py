"""``/api/multi-region``: the multi-region API this product replaces, mapped onto the admin API.

Same operations, query parameters and body fields as the old API; answers keep its envelope,
``{"success": true, "data": ..., "timestamp": ISO-8601}`` or ``{"success": false, "error":
"..."}`` with a 4xx/5xx status. Each operation is a handler in a per-application table, so
a feature plugs in by registering its handler::

    compat.register(app, "POST", "replicate-model", replicate_model)

``replicate-model`` (admin/replication.py), ``aggregate-metrics`` and ``global-dashboard``
(admin/monitoring.py) are registered by their features; an operation nobody registered is
unknown (400), and the listing (GET without ``operation``) shows what is registered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from admin.bodies import check, read_body
from admin.errors import classify
from admin.explain import best_region_data, explain_request, snapshot_for_strategy
from admin.keys import CONTROL
from admin.regions import failover_status_shared
from admin.status import STATUS_EXTRAS, status_data
from admin.views import operation_json, region_json
from router.config.loader import STRATEGIES, parse_region
from router.config.validate import (
    FieldError,
    Fields,
    ValidationError,
    as_choice,
    as_duration,
    as_str,
)
from router.errors import UnknownRegion

PATH = "/api/multi-region"


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer when the status is not 200."""

    data: Any
    status: int = 200


class CompatError(Exception):
    """An answer of ``{"success": false, "error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# (request, params) -> data or Reply. GET params are the query string, POST params the body
# without "operation".
CompatHandler = Callable[[web.Request, dict[str, Any]], Awaitable[Any]]
HANDLERS = web.AppKey("compat_handlers", dict[tuple[str, str], CompatHandler])


def register(app: web.Application, method: str, operation: str, handler: CompatHandler) -> None:
    """Serve ``operation`` (GET query or POST body) with ``handler``; replaces any earlier one."""
    app[HANDLERS][(method.upper(), operation)] = handler


def setup(app: web.Application) -> None:
    """Install the endpoint and the built-in operations on the admin application."""
    app[HANDLERS] = {}
    for (method, operation), handler in BUILT_IN.items():
        register(app, method, operation, handler)
    app.router.add_get(PATH, handle)
    app.router.add_post(PATH, handle)


def timestamp() -> str:
    """ISO-8601 UTC with milliseconds, like JavaScript's ``toISOString()``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def envelope_ok(data: Any, status: int = 200) -> web.Response:
    body = {"success": True, "data": data, "timestamp": timestamp()}
    return _json(body, status)


def envelope_error(
    status: int, message: str, code: str | None = None, details: Any = None
) -> web.Response:
    body: dict[str, Any] = {"success": False, "error": message, "timestamp": timestamp()}
    if code is not None:
        body["code"] = code
    if details is not None:
        body["details"] = details
    return _json(body, status)


def _json(body: dict[str, Any], status: int) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )


async def handle(request: web.Request) -> web.StreamResponse:
    try:
        if request.method == "GET":
            params: dict[str, Any] = dict(request.query)
            operation = params.pop("operation", None)
            if operation is None:
                return envelope_ok(_listing(request.app))
        else:
            params = await _read_body(request)
            operation = params.pop("operation", None)
            if not isinstance(operation, str) or not operation:
                raise CompatError(400, "operation required (a string)")
        handler = request.app[HANDLERS].get((request.method, operation))
        if handler is None:
            raise CompatError(400, f"Unknown operation: {operation}")
        result = await handler(request, params)
    except CompatError as exc:
        return envelope_error(exc.status, exc.message)
    except Exception as exc:
        known = classify(exc)
        if known is None:
            raise  # the error middleware logs it and answers 500
        status, code, message, details = known
        return envelope_error(status, message, code, details)
    if isinstance(result, Reply):
        return envelope_ok(result.data, result.status)
    return envelope_ok(result)


async def _read_body(request: web.Request) -> dict[str, Any]:
    raw = await read_body(request)
    try:
        data = orjson.loads(raw) if raw.strip() else None
    except orjson.JSONDecodeError as exc:
        raise ValidationError([FieldError("body", f"invalid JSON: {exc}")]) from None
    if not isinstance(data, dict):
        raise ValidationError([FieldError("body", 'expected a JSON object {"operation": ...}')])
    return data


def _listing(app: web.Application) -> dict[str, Any]:
    table = app[HANDLERS]
    ops = sorted(table)
    return {
        "message": "Multi-Region API ready",
        "get": [op for method, op in ops if method == "GET"],
        "post": [op for method, op in ops if method == "POST"],
    }


def _region_view(request: web.Request, region_id: str) -> dict[str, Any]:
    control = request.app[CONTROL]
    view = control.registry.snapshot().by_id.get(region_id)
    if view is None:
        raise UnknownRegion(region_id)
    data = region_json(control, view)
    data["status"] = data["state"]  # the old API's name for it
    return data


# -- GET operations ----------------------------------------------------------------------


async def region_status(request: web.Request, params: dict[str, Any]) -> Any:
    region_id = params.get("regionId")
    if not region_id:
        raise CompatError(400, "regionId required")
    return _region_view(request, region_id)


async def global_status(request: web.Request, params: dict[str, Any]) -> Any:
    return status_data(request.app[CONTROL], request.app.get(STATUS_EXTRAS, []))


async def service_status(request: web.Request, params: dict[str, Any]) -> Any:
    full = status_data(request.app[CONTROL], [])
    keys = ("version", "instance_id", "uptime_s", "strategy", "config_hash", "ready", "panic")
    return {
        **{k: full[k] for k in keys},
        "status": "running",
        "regions": len(full["regions"]),
    }


async def best_region(request: web.Request, params: dict[str, Any]) -> Any:
    strategy = params.get("strategy")
    data = best_region_data(request.app[CONTROL], strategy)
    if data is None:
        raise CompatError(503, "no region is eligible now")
    return {"bestRegion": data["region"], "strategy": data["strategy"], "reason": data["reason"]}


async def failover_status(request: web.Request, params: dict[str, Any]) -> Any:
    return await failover_status_shared(request.app[CONTROL])


# -- POST operations ---------------------------------------------------------------------


async def register_region(request: web.Request, params: dict[str, Any]) -> Any:
    control = request.app[CONTROL]
    errors: list[FieldError] = []
    rc = parse_region(params, "", errors)
    check(errors)
    assert rc is not None
    view = await control.register(rc)
    data = region_json(control, view)
    data["status"] = data["state"]
    return Reply(data, 201)


async def route_request(request: web.Request, params: dict[str, Any]) -> Any:
    control = request.app[CONTROL]
    errors: list[FieldError] = []
    with Fields(params, "", errors) as f:
        if f.raw("request") is None:
            f.error("request", "required: {endpoint, method}")
        with f.section("request") as rf:
            endpoint = rf.text("endpoint", "/")
            method = rf.text("method", "GET", nonempty=True)
            headers: list[str] = []
            for name, path, value in rf.entries("headers"):
                if isinstance(value, str):
                    headers.append(f"{name}:{value}")
                else:
                    errors.append(FieldError(path, "expected a string"))
        strategy = f.optional("strategy", as_choice(STRATEGIES))
    check(errors)
    if endpoint.startswith(("http://", "https://")):
        parts = urlsplit(endpoint)
        endpoint = parts.path or "/"
        if parts.hostname:
            headers.append(f"host:{parts.hostname}")
    if not endpoint.startswith("/"):
        endpoint = "/" + endpoint
    snap = snapshot_for_strategy(control, strategy)
    result = explain_request(
        control, method=method.upper(), path=endpoint, headers=headers, snap=snap
    )
    winner = result["winner"]
    if winner is None:
        raise CompatError(503, "no region is eligible now: the proxy would answer 503")
    region = region_json(control, snap.by_id[winner], detail=False)
    return {"regionId": winner, "region": region, **result}


async def initiate_failover(request: web.Request, params: dict[str, Any]) -> Any:
    control = request.app[CONTROL]
    errors: list[FieldError] = []
    with Fields(params, "", errors) as f:
        region_id = f.optional("regionId", as_str(nonempty=True))
        from_id = f.optional("fromRegionId", as_str(nonempty=True))
        to_id = f.optional("toRegionId", as_str(nonempty=True))
        target = f.optional("target", as_str(nonempty=True))
        reason = f.text("reason")
        drain_s = f.get("drain", as_duration(positive=False), 0.0)
        expires_s = f.optional("expires", as_duration())
    source = region_id or from_id
    if source is None:
        errors.append(FieldError("regionId", "required (or fromRegionId)"))
    if region_id and from_id and region_id != from_id:
        errors.append(FieldError("fromRegionId", "differs from regionId"))
    if to_id and target and to_id != target:
        errors.append(FieldError("toRegionId", "differs from target"))
    target = to_id or target
    check(errors)
    assert source is not None
    snap = control.registry.snapshot()
    if source not in snap.by_id:
        raise UnknownRegion(source)
    if target is not None and target not in snap.by_id:
        raise UnknownRegion(target)
    op = await control.failovers.failover(
        source, target=target, drain_s=drain_s, reason=reason, expires_s=expires_s
    )
    view = control.registry.snapshot().by_id[source]
    return Reply(
        {
            "operationId": op.id,
            "fromRegionId": source,
            "toRegionId": target,
            "operation": operation_json(op),
            "region": region_json(control, view, detail=False),
        },
        202,
    )


async def recover_region(request: web.Request, params: dict[str, Any]) -> Any:
    control = request.app[CONTROL]
    errors: list[FieldError] = []
    with Fields(params, "", errors) as f:
        region_id = f.required("regionId", as_str(nonempty=True))
        reason = f.text("reason") or "manual recover"
    check(errors)
    assert region_id is not None
    if region_id not in control.registry.snapshot().by_id:
        raise UnknownRegion(region_id)
    op = await control.failovers.recover(region_id, reason=reason)
    view = control.registry.snapshot().by_id[region_id]
    return Reply(
        {
            "regionId": region_id,
            "operation": operation_json(op) if op is not None else None,
            "region": region_json(control, view, detail=False),
            "message": "the region turns eligible after its next passing health check",
        },
        202,
    )


BUILT_IN: dict[tuple[str, str], CompatHandler] = {
    ("GET", "status"): region_status,
    ("GET", "global-status"): global_status,
    ("GET", "service-status"): service_status,
    ("GET", "best-region"): best_region,
    ("GET", "failover-status"): failover_status,
    ("POST", "register-region"): register_region,
    ("POST", "route-request"): route_request,
    ("POST", "initiate-failover"): initiate_failover,
    ("POST", "recover-region"): recover_region,
}
