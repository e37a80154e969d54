"""The control plane's documents in ``state_dir``: regions, operations, history.

What each looks like on disk, and how it comes back at start-up. Restoring never crashes
on bad data: a malformed document or entry is set aside (copied next to the file) and
reported through the store's ``problems``, and the valid rest is used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from router.config.loader import (
    FieldError,
    RegionConfig,
    parse_region,
    parse_region_patch,
    to_plain,
)
from router.errors import UnknownRegion
from router.state.operations import OperationBook
from router.state.registry import Registry, Transition
from router.state.snapshot import RegionState
from router.store.files import StateStore

log = logging.getLogger("router.control.core")

HISTORY_KEEP = 1000


class ControlState:
    """Reads and writes the regions, operations and history documents."""

    def __init__(
        self,
        registry: Registry,
        store: StateStore,
        ops: OperationBook,
        record_transition: Callable[[Transition], None],
        instance_id: str = "",
    ) -> None:
        self.registry = registry
        self.store = store
        self.ops = ops
        self.record_transition = record_transition
        self.instance_id = instance_id  # written with this instance's transitions

    def __repr__(self) -> str:
        return f"<ControlState {self.store!r}>"

    def restore(self, now: float, wall: float) -> None:
        """History first (this life's transitions follow it), then regions, then operations.

        Raises ``StateFormatError`` for a file from a newer version.
        """
        self.store.remove_leftovers()
        self._restore_history()
        self._restore_regions(now)
        self._restore_operations(now, wall)

    def _restore_history(self) -> None:
        data = self.store.load("history")
        if data is None:
            return
        if not isinstance(data, list):
            self.store.set_aside("history", "history.json: expected a list of transitions")
            return
        bad = 0
        for item in data[-HISTORY_KEEP:]:
            try:
                self.registry.history.append(
                    Transition(
                        at=float(item["at"]),
                        region=str(item["region"]),
                        from_state=RegionState(item["from"]),
                        to_state=RegionState(item["to"]),
                        reason=str(item["reason"]),
                        # "" for this instance's own: they look as they did before the restart
                        instance=_other(str(item.get("instance", "")), self.instance_id),
                    )
                )
            except (KeyError, ValueError, TypeError, AttributeError):
                bad += 1
        if bad:
            self.store.set_aside("history", f"history.json: skipped {bad} malformed entries")

    def _restore_regions(self, now: float) -> None:
        doc = self.store.load("regions")
        if doc is None:
            return
        if not isinstance(doc, dict):
            self.store.set_aside("regions", "regions.json: expected an object")
            return
        errors: list[FieldError] = []
        runtime_list = doc.get("runtime") or []
        if not isinstance(runtime_list, list):
            errors.append(FieldError("regions.json: runtime", "expected a list"))
            runtime_list = []
        for i, data in enumerate(runtime_list):
            rc = parse_region(data, f"regions.json: runtime[{i}]", errors)
            if rc is None:
                continue
            if rc.id in self.registry.snapshot().by_id:
                log.warning(
                    "region %s was registered at runtime and is now in the config file; "
                    "the file's definition wins",
                    rc.id,
                )
                continue
            self.registry.add_region(rc, now)
        overrides = doc.get("overrides") or {}
        bases = doc.get("override_bases") or {}
        if not isinstance(overrides, dict) or not isinstance(bases, dict):
            errors.append(FieldError("regions.json: overrides", "expected an object"))
            overrides, bases = {}, {}
        for region_id, data in overrides.items():
            path = f"regions.json: overrides.{region_id}"
            changes = parse_region_patch(data, path, errors)
            try:
                rec = self.registry.record(region_id)
            except UnknownRegion:
                log.info("dropping overrides of %s: no longer in the config file", region_id)
                continue
            if rec.source != "config" or rec.base is None:
                continue
            base = bases.get(region_id)
            if not isinstance(base, dict):
                base = {}
            kept: dict[str, object] = {}
            for name, value in changes.items():
                if name in base and base[name] != to_plain(getattr(rec.base, name)):
                    log.info(
                        "dropping the %s override of %s: the config file changed %s",
                        name,
                        region_id,
                        name,
                    )
                    continue
                kept[name] = value
            if kept:
                self.registry.update_region(region_id, now, **kept)
        if errors:
            self.store.set_aside("regions", "; ".join(map(str, errors)))

    def _restore_operations(self, now: float, wall: float) -> None:
        data = self.store.load("operations")
        if data is None:
            return
        try:
            self.ops.load_json(data)
        except ValueError as exc:
            self.store.set_aside("operations", f"operations.json: {exc}")
            return
        by_id = self.registry.snapshot().by_id
        for op in list(self.ops.active.values()):
            if op.region not in by_id:
                self.ops.end(op.region, wall, "region no longer exists")
                continue
            target = op.target if op.target in by_id else None
            t = self.registry.set_manual(
                op.region,
                "failed_over",
                now,
                wall,
                f"restored operation {op.id}: {op.reason}",
                target=target,
            )
            if t is not None:
                self.record_transition(t)

    async def save_history(self) -> None:
        await self.store.write(
            "history",
            [
                {
                    "at": t.at,
                    "region": t.region,
                    "from": t.from_state.value,
                    "to": t.to_state.value,
                    "reason": t.reason,
                    "instance": t.instance or self.instance_id,
                }
                for t in self.registry.history
            ],
        )

    async def save_regions(self, *, create: str | None = None) -> None:
        """Persist registrations and overrides; ``create``: an entry that must be new."""
        runtime_regions = []
        overrides: dict[str, dict[str, Any]] = {}
        bases: dict[str, dict[str, Any]] = {}
        for rec in self.registry.records():
            if rec.source == "runtime":
                if not rec.removing:
                    runtime_regions.append(region_config_json(rec.config))
            elif rec.overrides:
                region_id = rec.config.id
                overrides[region_id] = to_plain(rec.overrides)
                if rec.base is not None:
                    # The file's value when the override was made: a restart drops the
                    # override when the file has changed that field meanwhile.
                    bases[region_id] = {k: to_plain(getattr(rec.base, k)) for k in rec.overrides}
        await self.store.write(
            "regions",
            {"runtime": runtime_regions, "overrides": overrides, "override_bases": bases},
            create=create,
        )

    async def save_ops(self, *, create: str | None = None) -> None:
        await self.store.write("operations", self.ops.to_json(), create=create)


def region_config_json(rc: RegionConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": rc.id,
        "name": rc.name,
        "endpoint": rc.endpoint.url,
        "weight": rc.weight,
        "priority": rc.priority,
        "labels": dict(rc.labels),
        "max_inflight": rc.max_inflight,
    }
    if rc.metrics_path is not None:
        out["metrics_path"] = rc.metrics_path
    if rc.ca_file is not None:
        out["ca_file"] = rc.ca_file
    if rc.protocol != "http1":
        out["protocol"] = rc.protocol
    return out


def _other(instance: str, own: str) -> str:
    return "" if instance == own else instance
