"""Persistent runtime state in ``state_dir``: one JSON document per kind, written atomically.

Kinds: ``regions`` (runtime registrations and overrides), ``operations`` (manual failover),
``history`` (transitions), and later ``replications`` and ``artifacts``. Each write goes to
a temp file, is fsynced, renamed over the old one, and the directory is fsynced, so a crash
leaves either the old or the new document. A file that cannot be parsed is moved aside
with a timestamp and reported; a file from a newer format version stops the start-up.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("router.store")

FORMAT_VERSION = 1
KINDS = ("regions", "operations", "history", "replications", "artifacts")


class StateFormatError(Exception):
    """A state file written by a newer region-router: refuse rather than lose data."""


@dataclass(slots=True)
class StoreProblem:
    at: float
    kind: str
    message: str
    moved_to: str | None = None


@dataclass(slots=True)
class FileStateStore:
    state_dir: Path
    problems: list[StoreProblem] = field(default_factory=list)
    writes: int = 0

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)

    def path(self, kind: str) -> Path:
        return self.state_dir / f"{kind}.json"

    def load(self, kind: str) -> Any:
        """The stored data of ``kind`` or None; corrupt files are moved aside and reported."""
        path = self.path(kind)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._problem(kind, f"cannot read {path}: {exc.strerror}", None)
            return None
        try:
            doc = orjson.loads(raw)
            if not isinstance(doc, dict) or "format" not in doc or "data" not in doc:
                raise ValueError("not a region-router state document")
            version = doc["format"]
            if not isinstance(version, int):
                raise ValueError("format is not an integer")
        except (orjson.JSONDecodeError, ValueError) as exc:
            moved = self._move_aside(path)
            self._problem(kind, f"corrupt state file {path}: {exc}", moved)
            return None
        if version > FORMAT_VERSION:
            raise StateFormatError(
                f"{path} was written by a newer region-router (state format {version}, this "
                f"version reads up to {FORMAT_VERSION}); upgrade, or move the file away"
            )
        return doc["data"]

    def save(self, kind: str, data: Any) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.path(kind)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        payload = orjson.dumps(
            {"format": FORMAT_VERSION, "kind": kind, "saved_at": time.time(), "data": data},
            option=orjson.OPT_INDENT_2,
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.writes += 1

    def _move_aside(self, path: Path) -> str | None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        try:
            os.replace(path, target)
        except OSError:
            return None
        return str(target)

    def _problem(self, kind: str, message: str, moved: str | None) -> None:
        log.error("%s%s", message, f" (moved to {moved})" if moved else "")
        self.problems.append(
            StoreProblem(at=time.time(), kind=kind, message=message, moved_to=moved)
        )

    def __repr__(self) -> str:
        return (
            f"<FileStateStore {self.state_dir} writes={self.writes} problems={len(self.problems)}>"
        )
