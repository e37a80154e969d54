"""Several instances as one router: other instances' changes applied here, quorum, leases.

Built by ``Control`` when ``state.backend`` is ``redis``. The store hands over each change
another instance made (a kind, the entries it set, the keys it deleted; see
router/store/docs.py) and ``apply`` brings this instance's registry, failover operations,
replication jobs and artifact inventory in line, under ``Control.lock`` so it never lands
between one of this instance's writes and its rollback. Registrations and removals, manual
failovers and their ends (expiry included) take effect here as they did there; health is
not shared as state but as verdicts (router/cluster/quorum.py); jobs run under leases
(router/cluster/leases.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from router.cluster.leases import JobLeases
from router.cluster.quorum import HealthQuorum
from router.config.loader import FieldError, parse_region, parse_region_patch, to_plain
from router.errors import UnknownRegion
from router.state.operations import FailoverOperation
from router.store.docs import split_key
from router.store.redis import RedisStateStore

if TYPE_CHECKING:
    from router.control.core import Control

log = logging.getLogger("router.control.remote")

PATCHABLE = ("name", "weight", "priority", "labels")


class Cluster:
    def __init__(self, control: Control, store: RedisStateStore) -> None:
        self.control = control
        self.store = store
        self.quorum = HealthQuorum(control.runtime, store)
        self.leases = JobLeases(control.replication, store)
        self.applied = 0
        store.on_change = self.apply
        store.on_reconnect = self._on_reconnect

    def __repr__(self) -> str:
        return f"<Cluster {self.store.instance_id} applied={self.applied} {self.store!r}>"

    async def start(self) -> None:
        await self.quorum.start()
        await self.leases.start()

    async def stop(self) -> None:
        await self.leases.stop()
        await self.quorum.stop()

    @property
    def stale(self) -> bool:
        """Reads answer from the last known state: the shared store is unreachable."""
        return not self.store.connected

    def status(self) -> dict[str, Any]:
        """The ``cluster`` section of /admin/status (plus ``stale`` at the top level)."""
        return {
            "stale": self.stale,
            "cluster": {
                "instance_id": self.store.instance_id,
                "store": self.store.status(),
                "changes_applied": self.applied,
                "health": self.quorum.status(),
                "replication_leases": self.leases.status(),
            },
        }

    def _on_reconnect(self) -> None:
        self.quorum.recompute()

    # -- applying other instances' changes ---------------------------------------------

    async def apply(self, kind: str, entries: dict[str, Any], deleted: list[str]) -> None:
        async with self.control.lock:
            try:
                if kind == "regions":
                    self._regions(entries, deleted)
                elif kind == "operations":
                    self._operations(entries, deleted)
                elif kind == "replications":
                    self.control.replication.apply_remote(entries, deleted)
                elif kind == "artifacts":
                    self.control.inventory.apply_remote(entries, deleted)
            except Exception:
                log.exception("cannot apply a %s change from another instance", kind)
                return
            self.applied += 1

    def _regions(self, entries: Mapping[str, Any], deleted: list[str]) -> None:
        registry = self.control.registry
        now = time.monotonic()
        errors: list[FieldError] = []
        membership = False
        for key, value in entries.items():
            prefix, region_id = split_key(key)
            if prefix == "runtime":
                rc = parse_region(value, f"state store: regions {key}", errors)
                if rc is None:
                    continue
                rec = registry.find(region_id)
                if rec is None:
                    registry.add_region(rc, now)
                    membership = True
                elif rec.source == "config":
                    log.warning(
                        "region %s is in this config file; ignoring its registration", rc.id
                    )
                elif rec.config.endpoint != rc.endpoint:
                    registry.remove_region(region_id, now)
                    registry.add_region(rc, now)
                    membership = True
                else:
                    changes = {
                        f: getattr(rc, f)
                        for f in PATCHABLE
                        if getattr(rc, f) != getattr(rec.config, f)
                    }
                    if changes:
                        registry.update_region(region_id, now, **changes)
            elif prefix == "override" and isinstance(value, dict):
                self._overrides(region_id, value, errors)
        for key in deleted:
            prefix, region_id = split_key(key)
            rec = registry.find(region_id)
            if rec is None:
                continue
            if prefix == "runtime" and rec.source == "runtime" and not rec.removing:
                _ = self.control.begin_removal(region_id, None, "removed on another instance")
            elif prefix == "override" and rec.source == "config" and rec.overrides:
                self._set_overrides(region_id, {})
        if membership:
            self.control.runtime.health.sync()
        if errors:
            self.store.problem("regions", "; ".join(map(str, errors)))

    def _overrides(self, region_id: str, value: dict[str, Any], errors: list[FieldError]) -> None:
        rec = self.control.registry.find(region_id)
        if rec is None or rec.source != "config" or rec.base is None:
            return
        changes = parse_region_patch(value.get("overrides") or {}, f"overrides.{region_id}", errors)
        base = value.get("base") or {}
        kept = {
            name: v
            for name, v in changes.items()
            if name not in base or base[name] == to_plain(getattr(rec.base, name))
        }
        if kept != rec.overrides:
            self._set_overrides(region_id, kept)

    def _set_overrides(self, region_id: str, overrides: dict[str, object]) -> None:
        registry = self.control.registry
        rec = registry.record(region_id)
        assert rec.base is not None
        rec.overrides = dict(overrides)
        rec.config = replace(rec.base, **overrides)  # type: ignore[arg-type]  # validated fields
        registry.publish(time.monotonic())

    def _operations(self, entries: Mapping[str, Any], deleted: list[str]) -> None:
        control = self.control
        ops, registry, runtime = control.ops, control.registry, control.runtime
        now, wall = time.monotonic(), control.wall()
        ended_ids: dict[str, FailoverOperation] = {}
        for key, value in entries.items():
            prefix, _ = split_key(key)
            if prefix == "ended":
                op = FailoverOperation.from_json(value)
                ended_ids[op.id] = op
        if ended_ids:
            kept = [op for op in ops.ended if op.id not in ended_ids]
            ops.ended = sorted([*kept, *ended_ids.values()], key=lambda o: o.ended_at or 0.0)
            del ops.ended[: -ops.keep_ended]
        by_id = registry.snapshot().by_id
        for key, value in entries.items():
            prefix, region_id = split_key(key)
            if prefix != "active":
                continue
            op = FailoverOperation.from_json(value)
            current = ops.active.get(region_id)
            if current is not None and current.id == op.id:
                ops.active[region_id] = op
                continue
            if region_id not in by_id:
                continue
            if current is not None:
                ops.end(region_id, wall, f"replaced by operation {op.id}")
            ops.start(op)
            drain_left = max(0.0, op.created_at + op.drain_s - wall)
            t = registry.set_manual(
                region_id,
                "failed_over",
                now,
                wall,
                f"manual failover {op.id} (another instance): {op.reason}",
                drain_s=drain_left,
                target=op.target if op.target in by_id else None,
            )
            if t is not None:
                runtime.record_transition(t)
        for key in deleted:
            prefix, rest = split_key(key)
            if prefix == "ended":
                ops.ended = [op for op in ops.ended if op.id != rest]
                continue
            if prefix != "active":
                continue
            current = ops.active.pop(rest, None)
            if current is None:
                continue
            ended = ended_ids.get(current.id)
            if ended is None:
                ended = replace(
                    current, state="ended", ended_at=wall, ended_reason="ended on another instance"
                )
                ops.ended.append(ended)
                del ops.ended[: -ops.keep_ended]
            try:
                rec = registry.record(rest)
            except UnknownRegion:
                continue
            if rec.manual is None or rec.removing:
                continue
            reason = ended.ended_reason or "ended on another instance"
            t = registry.set_manual(rest, None, now, wall, reason)
            if t is not None:
                runtime.record_transition(t)
            runtime.health.check_now(rest)
