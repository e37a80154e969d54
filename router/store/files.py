"""Persistent runtime state in ``state_dir``: one JSON document per kind, written atomically.

Kinds: ``regions`` (runtime registrations and overrides), ``operations`` (manual failover),
``history`` (transitions), and later ``replications`` and ``artifacts``. Each write goes to
a temp file, is fsynced, renamed over the old one, and the directory is fsynced, so a crash
leaves either the old or the new document. A file that cannot be parsed is moved aside
with a timestamp (``regions.json.corrupt-20250101T120000Z``) and reported; a file from a
newer format version stops the start-up.

``StateStore`` is the interface the control plane writes through; ``FileStateStore`` is the
one-host backend, ``router.store.redis.RedisStateStore`` the shared one (several hosts).
Both hold the same documents; the Redis one also tells every instance about each change.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from router.errors import RegionConflict, RouterError

log = logging.getLogger("router.store.files")

FORMAT_VERSION = 1
KINDS = ("regions", "operations", "history", "replications", "artifacts")


class StateFormatError(RouterError):
    """A state file written by a newer region-router: refuse rather than lose data."""


class StoreWriteError(RouterError):
    """A state file could not be written (disk full, permissions): nothing was changed."""


class StoreConflict(RegionConflict):
    """A write that must create an entry found it already there (written by another host)."""

    def __init__(self, kind: str, key: str, current: Any) -> None:
        super().__init__(f"{kind} {key!r} already exists")
        self.kind = kind
        self.key = key
        self.current = current


@dataclass(slots=True)
class StoreProblem:
    at: float
    kind: str
    message: str
    moved_to: str | None = None


class StateStore(Protocol):
    """Where the control plane keeps its documents (kinds in ``KINDS``).

    ``load`` is synchronous: documents are read at ``open`` (the file backend reads the
    file when asked). ``write`` persists a whole document; ``create`` names an entry that
    must not exist yet (a new region, a region's failover operation): when another host
    wrote it first, ``StoreConflict``. A failed write raises ``StoreWriteError`` and
    changes nothing.
    """

    backend: str
    state_dir: Path
    problems: list[StoreProblem]

    @property
    def connected(self) -> bool: ...

    async def open(self) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def load(self, kind: str) -> Any: ...

    async def write(self, kind: str, data: Any, *, create: str | None = None) -> None: ...

    def remove_leftovers(self) -> list[str]: ...

    def set_aside(self, kind: str, reason: str) -> str | None: ...

    def problem(self, kind: str, message: str, moved: str | None = None) -> None: ...

    def status(self) -> dict[str, Any]: ...

    async def shared_history(self) -> list[Any] | None:
        """Every instance's transitions as stored (oldest first); None: only this one's."""
        ...


@dataclass(slots=True)
class FileStateStore:
    state_dir: Path
    problems: list[StoreProblem] = field(default_factory=list)
    writes: int = 0
    backend: str = "file"

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)

    @property
    def connected(self) -> bool:
        return True

    async def open(self) -> None:
        """Nothing to connect: files are read when loaded."""

    async def start(self) -> None:
        """No background work."""

    async def close(self) -> None:
        """Nothing to close: every write is complete when it returns."""

    async def write(self, kind: str, data: Any, *, create: str | None = None) -> None:
        """``save``; ``create`` needs no check here (one process: the caller checked)."""
        self.save(kind, data)

    async def shared_history(self) -> list[Any] | None:
        return None  # one instance: the registry's own history is the whole history

    def status(self) -> dict[str, Any]:
        return {"backend": "file", "state_dir": str(self.state_dir), "writes": self.writes}

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
        """Write atomically: temp file, fsync, rename over, fsync the directory.

        Raises ``StoreWriteError`` (the old document is intact) when the write fails.
        """
        path = self.path(kind)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        payload = orjson.dumps(
            {"format": FORMAT_VERSION, "kind": kind, "saved_at": time.time(), "data": data},
            option=orjson.OPT_INDENT_2,
        )
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            dir_fd = os.open(self.state_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StoreWriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self.writes += 1

    def remove_leftovers(self) -> list[str]:
        """Delete temp files a crash left behind (a rename never happened: not state)."""
        removed: list[str] = []
        for tmp in self.state_dir.glob(".*.json.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(str(tmp))
        return removed

    def set_aside(self, kind: str, reason: str) -> str | None:
        """Copy a readable file aside before data in it is dropped (e.g. an invalid entry)."""
        path = self.path(kind)
        target = self._aside_name(path, "invalid")
        try:
            target.write_bytes(path.read_bytes())
        except OSError:
            target_text = None
        else:
            target_text = str(target)
        self._problem(kind, reason, target_text)
        return target_text

    def _aside_name(self, path: Path, what: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = path.with_name(f"{path.name}.{what}-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}.{what}-{stamp}-{n}")
        return target

    def _move_aside(self, path: Path) -> str | None:
        target = self._aside_name(path, "corrupt")
        try:
            os.replace(path, target)
        except OSError:
            return None
        return str(target)

    def problem(self, kind: str, message: str, moved: str | None = None) -> None:
        """Report a problem with stored state (log and ``problems``, shown in status)."""
        self._problem(kind, message, moved)

    def _problem(self, kind: str, message: str, moved: str | None) -> None:
        log.error("%s%s", message, f" (moved to {moved})" if moved else "")
        self.problems.append(
            StoreProblem(at=time.time(), kind=kind, message=message, moved_to=moved)
        )

    def __repr__(self) -> str:
        return (
            f"<FileStateStore {self.state_dir} writes={self.writes} problems={len(self.problems)}>"
        )
