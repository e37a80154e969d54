"""Admin routes for regions and manual failover operations."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin.bodies import check, json_response, read_json
from admin.keys import CONTROL
from admin.views import operation_json, region_json, transition_json
from router.config.loader import parse_region, parse_region_patch
from router.config.validate import FieldError, Fields, as_duration, as_str
from router.control.core import Control
from router.errors import NotFound, UnknownRegion

routes = web.RouteTableDef()


@routes.get("/admin/regions")
async def list_regions(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    snap = control.registry.snapshot()
    return json_response({"regions": [region_json(control, r) for r in snap.regions]})


@routes.post("/admin/regions")
async def register_region(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    body = await read_json(request)
    errors: list[FieldError] = []
    rc = parse_region(body, "", errors)
    check(errors)
    assert rc is not None
    view = await control.register(rc)
    return json_response(region_json(control, view), status=201)


def _region_id(request: web.Request) -> str:
    control = request.app[CONTROL]
    region_id = request.match_info["id"]
    if region_id not in control.registry.snapshot().by_id:
        raise UnknownRegion(region_id)
    return region_id


@routes.get("/admin/regions/{id}")
async def get_region(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    region_id = _region_id(request)
    return json_response(region_json(control, control.registry.snapshot().by_id[region_id]))


@routes.patch("/admin/regions/{id}")
async def patch_region(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    region_id = _region_id(request)
    body = await read_json(request)
    errors: list[FieldError] = []
    changes = parse_region_patch(body, "", errors)
    if not errors and not changes:
        errors.append(
            FieldError("body", "nothing to change: give name, weight, priority or labels")
        )
    check(errors)
    view = await control.patch(region_id, changes)
    return json_response(region_json(control, view))


@routes.delete("/admin/regions/{id}")
async def delete_region(request: web.Request) -> web.StreamResponse:
    """Drain (no new requests, in-flight ones finish, up to shutdown_grace), then remove."""
    control = request.app[CONTROL]
    region_id = _region_id(request)
    result = await control.delete(region_id)
    return json_response(
        {"id": region_id, "removed": True, "drained": result.drained, "waited_s": result.waited_s}
    )


@routes.post("/admin/regions/{id}/failover")
async def failover_region(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    region_id = _region_id(request)
    body = await read_json(request, required=False)
    errors: list[FieldError] = []
    with Fields(body, "", errors) as f:
        target = f.optional("target", as_str(nonempty=True))
        drain_s = f.get("drain", as_duration(positive=False), 0.0)
        reason = f.text("reason")
        expires_s = f.optional("expires", as_duration())
    if target is not None and target not in control.registry.snapshot().by_id:
        errors.append(FieldError("target", f"no region with id {target!r}"))
    elif target == region_id:
        errors.append(FieldError("target", "must be another region"))
    check(errors)
    op = await control.failovers.failover(
        region_id, target=target, drain_s=drain_s, reason=reason, expires_s=expires_s
    )
    view = control.registry.snapshot().by_id[region_id]
    return json_response(
        {"operation": operation_json(op), "region": region_json(control, view, detail=False)},
        status=202 if drain_s > 0 else 200,
    )


@routes.post("/admin/regions/{id}/recover")
async def recover_region(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    region_id = _region_id(request)
    body = await read_json(request, required=False)
    errors: list[FieldError] = []
    with Fields(body, "", errors) as f:
        reason = f.text("reason") or "manual recover"
    check(errors)
    before = control.registry.snapshot().by_id[region_id]
    op = await control.failovers.recover(region_id, reason=reason)
    view = control.registry.snapshot().by_id[region_id]
    changed = before.state != view.state or op is not None
    return json_response(
        {
            "operation": operation_json(op) if op is not None else None,
            "region": region_json(control, view, detail=False),
            "changed": changed,
            "message": (
                "the region turns eligible after its next passing health check"
                if changed
                else f"the region was not held out by an operator (state {view.state.value})"
            ),
        },
        status=202,
    )


@routes.get("/admin/operations")
async def list_operations(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    return json_response(control.ops.to_json())


@routes.get("/admin/operations/{op}")
async def get_operation(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    op = control.ops.get(request.match_info["op"])
    if op is None:
        raise NotFound(f"no failover operation with id {request.match_info['op']!r}")
    return json_response({"operation": operation_json(op)})


@routes.post("/admin/operations/{op}/undo")
async def undo_operation(request: web.Request) -> web.StreamResponse:
    control = request.app[CONTROL]
    op = await control.failovers.undo(request.match_info["op"])
    return json_response({"operation": operation_json(op)}, status=202)


def failover_status_data(control: Control) -> dict[str, Any]:
    """Every region's state, active operations and the transition history, newest first."""
    snap = control.registry.snapshot()
    return {
        "regions": [
            {
                "id": r.id,
                "state": r.state.value,
                "eligible": r.eligible,
                "priority": r.priority,
                "failover_target": r.failover_target,
                "operation": (
                    operation_json(control.ops.active[r.id]) if r.id in control.ops.active else None
                ),
            }
            for r in snap.regions
        ],
        "panic": snap.panic,
        "active_operations": [operation_json(op) for op in control.ops.active.values()],
        "history": [transition_json(t) for t in reversed(control.registry.history)],
    }


async def failover_status_shared(control: Control) -> dict[str, Any]:
    """Like ``failover_status_data``; with a shared store, every instance's history."""
    data = failover_status_data(control)
    shared = await control.store.shared_history()
    if shared is None:
        data["history_scope"] = "instance"
    else:
        data["history"] = list(reversed(shared))
        data["history_scope"] = "cluster"
    return data


@routes.get("/admin/failover")
async def failover_status(request: web.Request) -> web.StreamResponse:
    return json_response(await failover_status_shared(request.app[CONTROL]))
