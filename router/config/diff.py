"""Config reloads: read the file once (with its digest), diff old against new, report.

``read_config_text`` returns the file's text with the sha256 of the exact bytes read, so the
file watcher compares content (not mtimes, which editors and copies keep or reset at will)
and a reload never parses one version of the file while recording another's digest.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, fields
from typing import Any

from router.config.loader import Config, ConfigError, FieldError, RegionConfig, to_plain

# Settings read once at start-up: a reload accepts the change but it applies at the next
# start (the diff lists them under ``restart_required``).
RESTART_SECTIONS = ("listen", "state_dir", "state", "instance_id", "access_log")


@dataclass(slots=True)
class ConfigDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # region -> field -> [old, new]
    settings: dict[str, Any] = field(default_factory=dict)  # section -> [old, new]
    restart_required: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # side effects of the reload, for people

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.settings)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "settings": self.settings,
            "restart_required": self.restart_required,
            "notes": self.notes,
        }


@dataclass(slots=True)
class ReloadResult:
    ok: bool
    source: str  # "api", "signal", "watch"
    at: float  # wall clock
    errors: list[FieldError] = field(default_factory=list)
    diff: ConfigDiff | None = None
    config_hash: str = ""  # the config serving after the attempt (the old one on failure)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "source": self.source, "at": self.at}
        if self.errors:
            out["errors"] = [{"path": e.path, "message": e.message} for e in self.errors]
        if self.diff is not None:
            out["diff"] = self.diff.to_json()
        out["config_hash"] = self.config_hash
        return out


def file_digest(path: str) -> str | None:
    """sha256 of the file's bytes, or None when it cannot be read (watch: try again later)."""
    try:
        with open(path, "rb") as file:
            return hashlib.sha256(file.read()).hexdigest()
    except OSError:
        return None


def read_config_text(path: str) -> tuple[str, str]:
    """(text, sha256 of its bytes); ``ConfigError`` naming the path when unreadable."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError([FieldError(os.fspath(path), f"cannot read config: {reason}")]) from None
    return text, hashlib.sha256(raw).hexdigest()


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    diff = ConfigDiff()
    old_regions = {r.id: r for r in old.regions}
    new_regions = {r.id: r for r in new.regions}
    diff.added = [r for r in new_regions if r not in old_regions]
    diff.removed = [r for r in old_regions if r not in new_regions]
    for rid, rc in new_regions.items():
        prev = old_regions.get(rid)
        if prev is not None and prev != rc:
            diff.changed[rid] = _region_changes(prev, rc)
    for f in fields(Config):
        if f.name in ("regions", "config_hash"):
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a != b:
            diff.settings[f.name] = [to_plain(a), to_plain(b)]
            if f.name in RESTART_SECTIONS:
                diff.restart_required.append(f.name)
    if "admin" in diff.settings:
        diff.settings["admin"] = "changed (redacted)"
    return diff


def _region_changes(a: RegionConfig, b: RegionConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(RegionConfig):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if x != y:
            out[f.name] = [to_plain(x), to_plain(y)]
    return out
