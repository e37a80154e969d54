"""What a config reload changes: regions added, removed, changed, and other settings."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from router.config import Config, RegionConfig, to_plain

# Sections whose change needs a process restart to take effect.
RESTART_SECTIONS = ("listen",)


@dataclass(slots=True)
class ConfigDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # region -> field -> [old, new]
    settings: dict[str, Any] = field(default_factory=dict)  # section -> [old, new]
    restart_required: list[str] = field(default_factory=list)

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
        }


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
