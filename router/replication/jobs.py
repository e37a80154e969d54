"""Replication jobs as data: request parsing, job and per-target states, JSON both ways.

A job is plain mutable data owned by the engine (router/replication/engine.py); its JSON is what
the store keeps (kind ``replications``) and what the admin API shows, progress included.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from router.config.validate import FieldError, Fields, as_choice, as_str, list_items

KINDS: tuple[Literal["model", "config", "metrics", "artifact"], ...] = (
    "model",
    "config",
    "metrics",
    "artifact",
)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# printable, no whitespace, no fragment; dot segments are refused separately
_PATH_RE = re.compile(r"/[!$&'()*+,;=:@%/?A-Za-z0-9._~-]*")


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_JOB_STATES = frozenset({JobState.PENDING, JobState.RUNNING})


class TargetState(StrEnum):
    PENDING = "pending"  # not started, or waiting to retry (see attempts and last_error)
    COPYING = "copying"
    VERIFYING = "verifying"
    VERIFIED = "verified"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRequest:
    kind: str
    name: str
    path: str
    source: str
    targets: tuple[str, ...] | Literal["all"]


def parse_artifact_path(value: object) -> str:
    """An absolute path (query allowed) without dot segments, whitespace or a fragment."""
    text = as_str(nonempty=True)(value)
    if not text.startswith("/") or text.startswith("//"):
        raise ValueError(f'must be an absolute path starting with a single "/", got {text!r}')
    if not _PATH_RE.fullmatch(text):
        raise ValueError("must be printable ASCII without spaces or '#' (percent-encode others)")
    segments = text.split("?", 1)[0].split("/")
    if any(seg in {".", ".."} for seg in segments):
        raise ValueError("must not contain . or .. segments")
    return text


def parse_job_request(body: object, errors: list[FieldError]) -> JobRequest | None:
    """Shape checks only; the engine checks the region ids against the registry."""
    start = len(errors)
    with Fields(body, "", errors) as f:
        kind = f.required("kind", as_choice(KINDS))
        name = f.required("name", as_str(pattern=NAME_RE))
        path = f.required("path", parse_artifact_path)
        source = f.required("source", as_str(nonempty=True))
        raw_targets = f.raw("targets")
    targets: tuple[str, ...] | Literal["all"] = ()
    if raw_targets == "all":
        targets = "all"
    elif raw_targets is None or raw_targets == []:
        errors.append(FieldError("targets", 'required: a non-empty list of region ids, or "all"'))
    elif not isinstance(raw_targets, list):
        errors.append(FieldError("targets", 'expected a list of region ids or "all"'))
    else:
        ids: list[str] = []
        for path_i, item in list_items(raw_targets, "targets", errors):
            if not isinstance(item, str) or not item:
                errors.append(FieldError(path_i, "expected a region id"))
            elif item in ids:
                errors.append(FieldError(path_i, f"{item!r} is listed twice"))
            else:
                ids.append(item)
        targets = tuple(ids)
    if len(errors) > start:
        return None
    assert kind is not None and name is not None and path is not None and source is not None
    return JobRequest(kind=kind, name=name, path=path, source=source, targets=targets)


@dataclass(slots=True, kw_only=True)
class TargetProgress:
    region: str
    state: TargetState = TargetState.PENDING
    bytes: int = 0  # bytes sent in the current (or last) attempt
    digest: str | None = None  # sha256 of the verified copy
    attempts: int = 0
    last_error: str | None = None
    verified_by: str | None = None  # how the copy was proven: see docs/replication.md
    finished_at: float | None = None

    @property
    def done(self) -> bool:
        return self.state in (TargetState.VERIFIED, TargetState.FAILED)

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "state": self.state.value,
            "bytes": self.bytes,
            "digest": self.digest,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "verified_by": self.verified_by,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetProgress:
        return cls(
            region=str(data["region"]),
            state=TargetState(data.get("state", "pending")),
            bytes=int(data.get("bytes") or 0),
            digest=data.get("digest"),
            attempts=int(data.get("attempts") or 0),
            last_error=data.get("last_error"),
            verified_by=data.get("verified_by"),
            finished_at=data.get("finished_at"),
        )


@dataclass(slots=True, kw_only=True)
class Job:
    id: str
    kind: str
    name: str
    path: str
    source: str
    targets: list[TargetProgress]
    created_at: float  # wall clock, like every time below
    state: JobState = JobState.PENDING
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    sha256: str | None = None  # of the source, fixed by the first complete read
    size_bytes: int | None = None
    read_at: float | None = None  # when the source was read (its digest's age)
    fetched_bytes: int = 0  # bytes of the source read so far (progress of the spool)
    # ETag / Last-Modified / Content-Length the source sent with the first read
    validators: dict[str, str] = field(default_factory=dict)
    runner: str | None = None  # the instance that runs (or last ran) the job

    def reset_interrupted(self) -> None:
        """Targets caught mid-copy start that copy again (the interrupted try is not counted)."""
        for t in self.targets:
            if t.state in (TargetState.COPYING, TargetState.VERIFYING):
                t.state = TargetState.PENDING
                t.attempts = max(0, t.attempts - 1)
                t.bytes = 0

    @staticmethod
    def new_id() -> str:
        return "rep-" + secrets.token_hex(6)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_JOB_STATES

    def target(self, region_id: str) -> TargetProgress:
        return next(t for t in self.targets if t.region == region_id)

    def __repr__(self) -> str:
        verified = sum(1 for t in self.targets if t.state is TargetState.VERIFIED)
        return (
            f"<Job {self.id} {self.kind} {self.name} {self.state.value} "
            f"verified={verified}/{len(self.targets)}>"
        )

    def to_json(self) -> dict[str, Any]:
        verified = sum(1 for t in self.targets if t.state is TargetState.VERIFIED)
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "path": self.path,
            "source": self.source,
            "state": self.state.value,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "read_at": self.read_at,
            "fetched_bytes": self.fetched_bytes,
            "validators": dict(self.validators),
            "runner": self.runner,
            "progress": {
                "source_bytes": self.fetched_bytes,
                "copied_bytes": sum(t.bytes for t in self.targets),
                "targets_verified": verified,
                "targets_failed": sum(1 for t in self.targets if t.state is TargetState.FAILED),
                "targets_total": len(self.targets),
            },
            "targets": [t.to_json() for t in self.targets],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        return cls(
            id=str(data["id"]),
            kind=str(data["kind"]),
            name=str(data["name"]),
            path=str(data["path"]),
            source=str(data["source"]),
            targets=[TargetProgress.from_json(t) for t in data["targets"]],
            created_at=float(data["created_at"]),
            state=JobState(data.get("state", "pending")),
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            error=data.get("error"),
            sha256=data.get("sha256"),
            size_bytes=data.get("size_bytes"),
            read_at=data.get("read_at"),
            fetched_bytes=int(data.get("fetched_bytes") or 0),
            validators={str(k): str(v) for k, v in (data.get("validators") or {}).items()},
            runner=data.get("runner"),
        )
