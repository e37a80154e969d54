"""A replication request turned into a job, synchronously: the regions it names, the live jobs
it would clash with, and the compatibility API's ``replicate-model`` defaults.

Pure over a snapshot and the jobs: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

from router.config.validate import FieldError, ValidationError
from router.errors import RegionConflict
from router.replication.jobs import Job, JobRequest, TargetProgress
from router.state.snapshot import Snapshot


def plan_job(snap: Snapshot, request: JobRequest, jobs: Iterable[Job], now: float) -> Job:
    """A new job for ``request``; raises ValidationError (400) or RegionConflict (409)."""
    errors: list[FieldError] = []
    if request.source not in snap.by_id:
        errors.append(FieldError("source", f"no region with id {request.source!r}"))
    if request.targets == "all":
        targets = [r.id for r in snap.regions if r.id != request.source]
        if not targets:
            errors.append(FieldError("targets", '"all" names no region besides the source'))
    else:
        targets = list(request.targets)
        for i, region_id in enumerate(targets):
            if region_id not in snap.by_id:
                errors.append(FieldError(f"targets[{i}]", f"no region with id {region_id!r}"))
            elif region_id == request.source:
                errors.append(
                    FieldError(f"targets[{i}]", "is the source; a region cannot copy to itself")
                )
    if errors:
        raise ValidationError(errors)
    check_overlap(jobs, request.path, request.source, targets)
    return Job(
        id=Job.new_id(),
        kind=request.kind,
        name=request.name,
        path=request.path,
        source=request.source,
        targets=[TargetProgress(region=r) for r in targets],
        created_at=now,
    )


def check_overlap(jobs: Iterable[Job], path: str, source: str, targets: Iterable[str]) -> None:
    """Refuse two live jobs writing the same copy, or reading a copy being written."""
    wanted = set(targets)
    for other in jobs:
        if not other.active or other.path != path:
            continue
        theirs = {t.region for t in other.targets}
        clash = wanted & theirs or ({source} & theirs) or (wanted & {other.source})
        if clash:
            raise RegionConflict(
                f"job {other.id} is already replicating {path} "
                f"({other.source} -> {', '.join(sorted(theirs))}); wait or cancel it"
            )


def source_of(snap: Snapshot, name: str) -> str | None:
    """The region to read ``name`` from: the latest job's source, else any holder."""
    info = snap.artifacts.get(name)
    if info is not None and info.source in snap.by_id:
        return info.source
    return next((r.id for r in snap.regions if name in r.artifacts), None)


def model_request(
    snap: Snapshot,
    model_path: str,
    model_id: str,
    target: str | None,
    source: str | None = None,
    *,
    kind: str = "model",
    path: str | None = None,
) -> JobRequest:
    """The compatibility API's ``replicate-model``: path from ``model_path``
    (``replication.model_path``), source the region named, else :func:`source_of`."""
    path = path or model_path.replace("{modelId}", quote(model_id, safe=""))
    source = source or source_of(snap, model_id)
    if source is None:
        raise ValidationError(
            [FieldError("source", f"no region is known to hold {model_id!r}; name one")]
        )
    return JobRequest(
        kind=kind,
        name=model_id,
        path=path,
        source=source,
        targets=(target,) if target else "all",
    )
