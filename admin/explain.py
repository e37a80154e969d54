"""Admin routes that explain decisions without changing anything: route, best-region, simulate."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from admin.bodies import check, json_response, read_json
from admin.keys import CONTROL
from admin.views import region_json
from router.config.loader import (
    STRATEGIES,
    Config,
    ConfigError,
    config_from_mapping,
    config_hash,
    parse_config,
)
from router.config.validate import FieldError, Fields, ValidationError, as_choice, as_duration
from router.control.core import Control
from router.errors import BadRequest
from router.proxy.paths import normalize_path
from router.routing.explain import (
    SIM_STATES,
    explain,
    explain_hedging,
    hypothetical_loads,
    tiers_json,
    traffic_split,
    what_if,
)
from router.routing.strategies import RequestInfo
from router.state.snapshot import RoutePlan, Snapshot

routes = web.RouteTableDef()


def request_info(
    control: Control, path: str, header_items: list[str]
) -> tuple[str, str, RequestInfo | None]:
    """(host, normalised path, what selection looks at) for a described request."""
    errors: list[FieldError] = []
    if not path.startswith("/"):
        errors.append(FieldError("path", "must start with /"))
    headers: dict[str, str] = {}
    for i, item in enumerate(header_items):
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            errors.append(FieldError(f"header[{i}]", f"expected K:V, got {item!r}"))
            continue
        headers[name.strip().lower()] = value.strip()
    check(errors)
    try:
        norm = normalize_path(path.encode("utf-8"))
    except BadRequest as exc:
        raise ValidationError([FieldError("path", exc.message)]) from None
    host = headers.get("host", "").split(":", 1)[0].lower()
    cfg = control.registry.config
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


def explain_request(
    control: Control, *, method: str, path: str, headers: list[str], snap: Snapshot | None = None
) -> dict[str, Any]:
    """Which region would serve this request now, and why (shared with /api/multi-region)."""
    host, norm, info = request_info(control, path, headers)
    snapshot = snap or control.registry.snapshot()
    now = time.monotonic()
    loads = control.runtime.loads
    result = explain(snapshot, loads, hostname=host, path=norm, info=info, now=now)
    result["request"] = {"method": method, "path": norm, "host": host}
    winner = snapshot.by_id.get(result["winner"]) if result["winner"] else None
    keyed = any(h.split(":", 1)[0].strip().lower() == "idempotency-key" for h in headers)
    result["hedging"] = explain_hedging(
        snapshot.config, winner, loads, method=method, idempotency_key=keyed, now=now
    )
    return result


@routes.get("/admin/route")
async def route(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    q = request.query
    result = explain_request(
        control,
        method=q.get("method", "GET").upper(),
        path=q.get("path", "/"),
        headers=q.getall("header", []),
    )
    return json_response(result)


def snapshot_for_strategy(control: Control, strategy: str | None) -> Snapshot:
    """The live snapshot, or a what-if one where the top-level strategy is ``strategy``."""
    snap = control.registry.snapshot()
    if strategy is None or strategy == snap.config.strategy:
        return snap
    if strategy not in STRATEGIES:
        check([FieldError("strategy", f"expected one of {', '.join(STRATEGIES)}")])
    config = replace(snap.config, strategy=strategy)  # type: ignore[arg-type]  # checked above
    return what_if(control.registry, time.monotonic(), time.time(), config=config).snapshot()


def best_region_data(control: Control, strategy: str | None) -> dict[str, Any] | None:
    """The region the strategy picks now for a plain request; None when none is eligible."""
    snap = snapshot_for_strategy(control, strategy)
    result = explain(
        snap, control.runtime.loads, hostname="", path="/", info=None, now=time.monotonic()
    )
    winner = result["winner"]
    if winner is None:
        return None
    return {
        "region": region_json(control, snap.by_id[winner], detail=False),
        "strategy": result["strategy"],
        "reason": result["reason"],
        "candidates": result["candidates"],
    }


@routes.get("/admin/best-region")
async def best_region(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    data = best_region_data(control, request.query.get("strategy"))
    if data is None:
        return json_response(
            {"error": {"code": "no_eligible_region", "message": "no region is eligible now"}},
            status=503,
        )
    return json_response(data)


def _plan_json(snap: Snapshot, plan: RoutePlan, loads: Any, now: float) -> dict[str, Any]:
    return {
        "strategy": plan.strategy,
        "panic": plan.panic,
        "tiers": tiers_json(plan),
        "split": traffic_split(snap, loads, plan, now),
    }


@routes.post("/admin/simulate")
async def simulate(request: web.Request) -> web.StreamResponse:
    """What-if: a proposed config and/or hypothetical region states and latencies."""
    control = request.app[CONTROL]
    asked = _read_what_if(await read_json(request))
    now, wall = time.monotonic(), time.time()
    base = asked.config or control.registry.config
    if asked.strategy is not None:
        base = replace(base, strategy=asked.strategy)  # type: ignore[arg-type]  # a STRATEGIES name
        base = replace(base, config_hash=config_hash(base))
    side_ids = {r.id for r in base.regions} | {
        rec.config.id for rec in control.registry.records() if rec.source == "runtime"
    }
    check(
        [
            FieldError(f"regions.{region_id}", "no such region")
            for region_id in [*asked.states, *asked.latencies]
            if region_id not in side_ids
        ]
    )
    snap = what_if(control.registry, now, wall, config=base, states=asked.states).snapshot()
    loads = hypothetical_loads(asked.latencies, control.runtime.loads, now)
    return json_response(
        {
            "applied": False,
            "config_hash": snap.config.config_hash,
            "regions": {r.id: r.state.value for r in snap.regions},
            "default": _plan_json(snap, snap.default_plan, loads, now),
            "routes": [
                {
                    "match": {"path_prefix": p.route.match.path_prefix, "host": p.route.match.host}
                    if p.route
                    else None,
                    **_plan_json(snap, p, loads, now),
                }
                for p in snap.route_plans
            ],
            "panic": snap.panic,
        }
    )


@dataclass(frozen=True, slots=True)
class _WhatIf:
    """A /admin/simulate body: a proposed config, a strategy, region states and latencies."""

    config: Config | None
    strategy: str | None
    states: dict[str, str]
    latencies: dict[str, float]


def _read_what_if(body: Any) -> _WhatIf:
    """The body, validated; raises ValidationError (400) with every field's error."""
    errors: list[FieldError] = []
    config: Config | None = None
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
                state = rf.optional("state", as_choice(SIM_STATES))
                latency = rf.optional("latency", as_duration())
            if state is not None:
                states[region_id] = state
            if latency is not None:
                latencies[region_id] = latency
        strategy = f.optional("strategy", as_choice(STRATEGIES))
    check(errors)
    return _WhatIf(config, strategy, states, latencies)
