"""Admin routes for replication jobs and the artifact inventory (docs/replication.md).

Jobs: trigger, list, inspect, cancel. Artifacts: what each region holds, and forgetting a
copy. ``setup`` also plugs ``replicate-model`` (``modelId``, ``regionId`` as the target,
optional ``fromRegionId``) into /api/multi-region and a ``replication`` section into
/admin/status.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from admin import compat
from admin.bodies import check, json_response, read_json
from admin.compat import Reply
from admin.keys import CONTROL
from admin.status import STATUS_EXTRAS
from router.config.validate import FieldError, Fields, ValidationError, as_choice, as_str
from router.control.core import Control
from router.errors import NotFound
from router.replication.jobs import (
    KINDS,
    NAME_RE,
    JobState,
    parse_artifact_path,
    parse_job_request,
)
from router.replication.planning import model_request

routes = web.RouteTableDef()


@routes.post("/admin/replications")
async def create_replication(request: web.Request) -> web.StreamResponse:
    """202 with the job: it runs in the background; poll GET /admin/replications/{id}."""
    engine = request.app[CONTROL].replication
    body = await read_json(request)
    errors: list[FieldError] = []
    job_request = parse_job_request(body, errors)
    check(errors)
    assert job_request is not None
    job = await engine.submit(job_request)
    response = json_response(job.to_json(), status=202)
    response.headers["Location"] = f"/admin/replications/{job.id}"
    return response


@routes.get("/admin/replications")
async def list_replications(request: web.Request) -> web.StreamResponse:
    """Every kept job, newest first; ``?state=running`` (or any job state) filters."""
    engine = request.app[CONTROL].replication
    wanted = request.query.get("state")
    if wanted is not None and wanted not in {s.value for s in JobState}:
        choices = ", ".join(s.value for s in JobState)
        check([FieldError("state", f"expected one of {choices}, got {wanted!r}")])
    jobs = [j for j in engine.recent() if wanted is None or j.state.value == wanted]
    return json_response({"jobs": [j.to_json() for j in jobs]})


@routes.get("/admin/replications/{id}")
async def get_replication(request: web.Request) -> web.StreamResponse:
    engine = request.app[CONTROL].replication
    return json_response(engine.get(request.match_info["id"]).to_json())


async def _cancel(request: web.Request) -> web.StreamResponse:
    """Stops the job (tasks cancelled and awaited, spool removed); 409 once it has ended."""
    engine = request.app[CONTROL].replication
    job = await engine.cancel(request.match_info["id"])
    return json_response(job.to_json())


routes.delete("/admin/replications/{id}")(_cancel)
routes.post("/admin/replications/{id}/cancel")(_cancel)


@routes.get("/admin/artifacts")
async def list_artifacts(request: web.Request) -> web.StreamResponse:
    return json_response({"artifacts": request.app[CONTROL].inventory.to_json()})


@routes.delete("/admin/artifacts/{name}/regions/{region}")
async def forget_copy(request: web.Request) -> web.StreamResponse:
    """Forget a region's copy (e.g. deleted there by hand): routing stops relying on it."""
    control = request.app[CONTROL]
    name, region_id = request.match_info["name"], request.match_info["region"]
    if not await control.inventory.remove(region_id, name):  # UnknownRegion -> 404 as well
        raise NotFound(f"region {region_id!r} holds no copy of {name!r}")
    return json_response({"name": name, "region": region_id, "removed": True})


def status_section(control: Control) -> dict[str, Any]:
    engine = control.replication
    return {
        "replication": {
            "active_jobs": [j.to_json() for j in engine.recent() if j.active],
            "artifacts": control.inventory.to_json(),
        }
    }


def setup(app: web.Application) -> None:
    """Routes, ``replicate-model`` on /api/multi-region (after ``compat.setup``), status."""
    control = app[CONTROL]
    app.router.add_routes(routes)
    compat.register(app, "POST", "replicate-model", replicate_model)
    app.setdefault(STATUS_EXTRAS, []).append(lambda: status_section(control))


# The old API's names for the fields the engine reports errors on.
_COMPAT_PATHS = {"source": "fromRegionId", "targets": "regionId", "targets[0]": "regionId"}


async def replicate_model(request: web.Request, params: dict[str, Any]) -> Any:
    """``POST /api/multi-region {"operation": "replicate-model", "modelId", "regionId"}``."""
    control = request.app[CONTROL]
    engine = control.replication
    errors: list[FieldError] = []
    with Fields(params, "", errors) as f:
        model_id = f.required("modelId", as_str(pattern=NAME_RE))
        target = f.optional("regionId", as_str(nonempty=True))
        source = f.optional("fromRegionId", as_str(nonempty=True))
        path = f.optional("path", parse_artifact_path)
        kind = f.get("kind", as_choice(KINDS), "model")
    check(errors)
    assert model_id is not None
    try:
        snap, model_path = control.registry.snapshot(), engine.config.model_path
        job_request = model_request(
            snap, model_path, model_id, target, source, kind=kind, path=path
        )
        job = await engine.submit(job_request)
    except ValidationError as exc:
        raise ValidationError(
            [FieldError(_COMPAT_PATHS.get(e.path, e.path), e.message) for e in exc.errors]
        ) from None
    data = {
        "jobId": job.id,
        "modelId": model_id,
        "fromRegionId": job.source,
        "regionIds": [t.region for t in job.targets],
        "path": job.path,
        "status": job.state.value,
        "job": job.to_json(),
    }
    return Reply(data, 202)
