"""Admin routes that read or explain: status, config, reload, route, best-region, simulate."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from aiohttp import web

from admin.bodies import check, json_response, read_json
from admin.keys import CONTROL
from admin.views import operation_json, region_json
from router import __version__
from router.config import STRATEGIES, ConfigError, config_from_mapping, parse_config, redacted_dict
from router.explain import explain, hypothetical_loads, traffic_split
from router.paths import normalize_path
from router.registry import Registry
from router.snapshot import RegionState
from router.strategies import RequestInfo
from router.validate import FieldError, Fields, ValidationError, as_duration

routes = web.RouteTableDef()


@routes.get("/admin/status")
async def status(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
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
    for extra in request.app.get(STATUS_EXTRAS, ()):
        body.update(extra())
    return json_response(body)


STATUS_EXTRAS = web.AppKey("status_extras", list)  # callables returning dicts


@routes.get("/admin/config")
async def get_config(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    cfg = control.registry.config
    return json_response(
        {"config_hash": cfg.config_hash, "path": control.config_path, "config": redacted_dict(cfg)}
    )


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
                    "message": "config rejected; nothing changed",
                    "details": body.get("errors", []),
                },
                **body,
            },
            status=400,
        )
    return json_response(body)


def _request_info(request: web.Request) -> tuple[str, str, RequestInfo | None]:
    q = request.query
    path = q.get("path", "/")
    errors: list[FieldError] = []
    if not path.startswith("/"):
        errors.append(FieldError("path", "must start with /"))
    headers: dict[str, str] = {}
    for i, item in enumerate(q.getall("header", [])):
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            errors.append(FieldError(f"header[{i}]", "expected K:V"))
            continue
        headers[name.strip().lower()] = value.strip()
    check(errors)
    try:
        norm = normalize_path(path.encode("latin-1", "replace"))
    except Exception as exc:  # BadRequest from the path rules
        raise ValidationError([FieldError("path", str(exc))]) from None
    host = headers.get("host", "").split(":", 1)[0].lower()
    cfg = request.app[CONTROL].registry.config
    cookie_region = None
    if cfg.affinity is not None and cfg.affinity.cookie and "cookie" in headers:
        for part in headers["cookie"].split(";"):
            k, _, v = part.strip().partition("=")
            if k == cfg.affinity.cookie:
                cookie_region = v
    affinity_key = (
        headers.get(cfg.affinity.header.lower())
        if cfg.affinity is not None and cfg.affinity.header
        else None
    )
    geo = headers.get(cfg.geo.header.lower())
    info = None
    if cookie_region or affinity_key or geo:
        info = RequestInfo(
            client_region=geo.lower() if geo else None,
            affinity_region=cookie_region,
            affinity_key=affinity_key,
        )
    return host, norm, info


@routes.get("/admin/route")
async def route(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    host, path, info = _request_info(request)
    runtime = control.runtime
    result = explain(
        control.registry.snapshot(),
        runtime.core.loads,
        hostname=host,
        path=path,
        info=info,
        now=time.monotonic(),
    )
    result["request"] = {"method": request.query.get("method", "GET"), "path": path, "host": host}
    return json_response(result)


@routes.get("/admin/best-region")
async def best_region(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    strategy = request.query.get("strategy")
    snap = control.registry.snapshot()
    if strategy is not None and strategy not in STRATEGIES:
        check([FieldError("strategy", f"expected one of {', '.join(STRATEGIES)}")])
    if strategy is not None and strategy != snap.config.strategy:
        snap = _registry_like(control, replace(snap.config, strategy=strategy)).snapshot()  # type: ignore[arg-type]  # validated above
    runtime = control.runtime
    result = explain(
        snap, runtime.core.loads, hostname="", path="/", info=None, now=time.monotonic()
    )
    winner = result["winner"]
    if winner is None:
        return json_response(
            {"error": {"code": "no_eligible_region", "message": "no region is eligible now"}},
            status=503,
        )
    return json_response(
        {
            "region": region_json(control, snap.by_id[winner], detail=False),
            "strategy": result["strategy"],
            "reason": result["reason"],
        }
    )


def _registry_like(control: Any, config: Any) -> Registry:
    """A registry for ``config`` carrying the live registry's region states (what-if)."""
    now = time.monotonic()
    side = Registry(config, now=now)
    live = {rec.config.id: rec for rec in control.registry.records()}
    for rec in live.values():
        if rec.source == "runtime" and rec.config.id not in side.snapshot().by_id:
            side.add_region(rec.config, now)
    for rec in side.records():
        src = live.get(rec.config.id)
        if src is None:
            rec.probed, rec.probe_up = True, True  # a proposed new region: assume it passes
        else:
            for name in (
                "probed",
                "probe_up",
                "ejected_until",
                "times_ejected",
                "ramp_started_at",
                "ramp",
                "manual",
                "drain_until",
                "probe_latency_s",
                "state",
            ):
                setattr(rec, name, getattr(src, name))
            rec.artifacts = dict(src.artifacts)
    side.publish(now)
    return side


_SIM_STATES = {
    "down": ("probe", False),
    "unhealthy": ("probe", False),
    "up": ("probe", True),
    "healthy": ("probe", True),
    "ejected": ("eject", True),
    "failed_over": ("manual", "failed_over"),
    "draining": ("manual", "draining"),
}


@routes.post("/admin/simulate")
async def simulate(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    body = await read_json(request)
    errors: list[FieldError] = []
    config = control.registry.config
    latencies: dict[str, float] = {}
    states: dict[str, str] = {}
    with Fields(body, "", errors) as f:
        proposed = f.raw("config")
        if proposed is not None:
            try:
                if isinstance(proposed, str):
                    config = parse_config(proposed)
                else:
                    config = config_from_mapping(proposed)
            except ConfigError as exc:
                errors.extend(FieldError(f"config.{e.path}", e.message) for e in exc.errors)
        for region_id, path, spec in f.entries("regions"):
            with Fields(spec, path, errors) as rf:
                state = rf.optional("state", _sim_state)
                latency = rf.optional("latency", as_duration())
            if state is not None:
                states[region_id] = state
            if latency is not None:
                latencies[region_id] = latency
        strategy = f.optional("strategy", _strategy)
    if strategy is not None:
        config = replace(config, strategy=strategy)  # type: ignore[arg-type]  # validated
    check(errors)
    side = _registry_like(control, config)
    now = time.monotonic()
    for region_id, state in states.items():
        if region_id not in side.snapshot().by_id:
            errors.append(FieldError(f"regions.{region_id}", "no such region"))
            continue
        kind, value = _SIM_STATES[state]
        rec = side.record(region_id)
        rec.manual = None
        if kind == "probe":
            rec.probed, rec.probe_up, rec.ejected_until = True, bool(value), None
        elif kind == "eject":
            rec.probed, rec.probe_up, rec.ejected_until = True, True, now + 3600
        else:
            rec.manual = str(value)
        side._derive(rec, now, time.time(), "simulated")
    check(errors)
    side.publish(now)
    snap = side.snapshot()
    runtime = control.runtime
    loads = hypothetical_loads(latencies, runtime.core.loads, time.monotonic())
    lnow = time.monotonic()

    def plan_json(plan: Any) -> dict[str, Any]:
        return {
            "strategy": plan.strategy,
            "panic": plan.panic,
            "tiers": [
                {
                    "priority": t.priority,
                    "share": round(t.share, 4),
                    "health_percent": round(t.health_percent, 1),
                    "regions": [r.id for r in t.regions],
                }
                for t in plan.tiers
            ],
            "split": traffic_split(snap, loads, plan, lnow),
        }

    return json_response(
        {
            "applied": False,
            "config_hash": snap.config.config_hash,
            "regions": {r.id: r.state.value for r in snap.regions},
            "default": plan_json(snap.default_plan),
            "routes": [
                {
                    "match": {"path_prefix": p.route.match.path_prefix, "host": p.route.match.host}
                    if p.route
                    else None,
                    **plan_json(p),
                }
                for p in snap.route_plans
            ],
            "panic": snap.panic,
        }
    )


def _sim_state(value: object) -> str:
    if value not in _SIM_STATES:
        raise ValueError(f"expected one of {', '.join(_SIM_STATES)}")
    return str(value)


def _strategy(value: object) -> str:
    if value not in STRATEGIES:
        raise ValueError(f"expected one of {', '.join(STRATEGIES)}")
    return str(value)


__all__ = ["STATUS_EXTRAS", "RegionState", "routes"]
