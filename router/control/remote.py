"""Other instances' changes, applied here: synchronous decisions over the registry and the book.

With ``state.backend: redis`` the store hands over each change another instance made (a
kind, the entries it set, the keys it deleted; see router/store/docs.py). The functions
here bring this instance's registry and failover operations in line and return what is
left to do (``Effects``): transitions to record, regions to drain and remove, regions to
probe now, problems to report. They never await and do no I/O; ``Control`` calls them under
its lock, so a change never lands between one of this instance's writes and its rollback,
and then carries out the effects. Registrations and removals, manual failovers and their
ends (expiry included) take effect here as they did there; health is not shared as state
but as verdicts (router/cluster/quorum.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from router.config.loader import FieldError, parse_region, parse_region_patch, to_plain
from router.errors import UnknownRegion
from router.state.operations import FailoverOperation, OperationBook
from router.state.registry import Registry, Transition
from router.store.docs import split_key

log = logging.getLogger("router.control.remote")

PATCHABLE = ("name", "weight", "priority", "labels")


@dataclass(slots=True)
class Effects:
    """What ``Control`` does after a change was applied to the registry and the book."""

    transitions: list[Transition] = field(default_factory=list)  # to record, in order
    removals: list[str] = field(default_factory=list)  # runtime regions: drain, then remove
    sync_probes: bool = False  # region membership changed: probe the new set
    check_now: list[str] = field(default_factory=list)  # a manual hold ended: probe at once
    problems: list[FieldError] = field(default_factory=list)  # entries that did not parse


def apply_regions(
    registry: Registry, entries: Mapping[str, Any], deleted: list[str], now: float
) -> Effects:
    """Registrations, patches, removals and config-region overrides made elsewhere."""
    effects = Effects()
    for key, value in entries.items():
        prefix, region_id = split_key(key)
        if prefix == "runtime":
            _registration(registry, region_id, key, value, now, effects)
        elif prefix == "override" and isinstance(value, dict):
            _overrides(registry, region_id, value, now, effects.problems)
    for key in deleted:
        prefix, region_id = split_key(key)
        rec = registry.find(region_id)
        if rec is None:
            continue
        if prefix == "runtime" and rec.source == "runtime" and not rec.removing:
            if region_id not in effects.removals:
                effects.removals.append(region_id)
        elif prefix == "override" and rec.source == "config" and rec.overrides:
            registry.set_overrides(region_id, {}, now)
    return effects


def _registration(
    registry: Registry, region_id: str, key: str, value: object, now: float, effects: Effects
) -> None:
    rc = parse_region(value, f"state store: regions {key}", effects.problems)
    if rc is None:
        return
    rec = registry.find(region_id)
    if rec is None:
        registry.add_region(rc, now)
        effects.sync_probes = True
    elif rec.source == "config":
        log.warning("region %s is in this config file; ignoring its registration", rc.id)
    elif rec.config.endpoint != rc.endpoint:
        registry.remove_region(region_id, now)
        registry.add_region(rc, now)
        effects.sync_probes = True
    else:
        changes = {f: getattr(rc, f) for f in PATCHABLE if getattr(rc, f) != getattr(rec.config, f)}
        if changes:
            registry.update_region(region_id, now, **changes)


def _overrides(
    registry: Registry,
    region_id: str,
    value: dict[str, Any],
    now: float,
    errors: list[FieldError],
) -> None:
    rec = registry.find(region_id)
    if rec is None or rec.source != "config" or rec.base is None:
        return
    changes = parse_region_patch(value.get("overrides") or {}, f"overrides.{region_id}", errors)
    base = value.get("base") or {}
    # An override made against a different file value is the other file's, not this one's.
    kept = {
        name: v
        for name, v in changes.items()
        if name not in base or base[name] == to_plain(getattr(rec.base, name))
    }
    if kept != rec.overrides:
        registry.set_overrides(region_id, kept, now)


def apply_operations(
    registry: Registry,
    ops: OperationBook,
    entries: Mapping[str, Any],
    deleted: list[str],
    now: float,
    wall: float,
) -> Effects:
    """Failover operations started, replaced and ended elsewhere."""
    effects = Effects()
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
    for key, value in entries.items():
        prefix, region_id = split_key(key)
        if prefix == "active":
            op = FailoverOperation.from_json(value)
            _started(registry, ops, region_id, op, now, wall, effects)
    for key in deleted:
        prefix, rest = split_key(key)
        if prefix == "ended":
            ops.ended = [op for op in ops.ended if op.id != rest]
        elif prefix == "active":
            _ended(registry, ops, rest, ended_ids, now, wall, effects)
    return effects


def _started(
    registry: Registry,
    ops: OperationBook,
    region_id: str,
    op: FailoverOperation,
    now: float,
    wall: float,
    effects: Effects,
) -> None:
    current = ops.active.get(region_id)
    if current is not None and current.id == op.id:
        ops.active[region_id] = op
        return
    by_id = registry.snapshot().by_id
    if region_id not in by_id:
        return
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
        effects.transitions.append(t)


def _ended(
    registry: Registry,
    ops: OperationBook,
    region_id: str,
    ended_ids: Mapping[str, FailoverOperation],
    now: float,
    wall: float,
    effects: Effects,
) -> None:
    current = ops.active.pop(region_id, None)
    if current is None:
        return
    ended = ended_ids.get(current.id)
    if ended is None:
        ended = replace(
            current, state="ended", ended_at=wall, ended_reason="ended on another instance"
        )
        ops.ended.append(ended)
        del ops.ended[: -ops.keep_ended]
    try:
        rec = registry.record(region_id)
    except UnknownRegion:
        return
    if rec.manual is None or rec.removing:
        return
    reason = ended.ended_reason or "ended on another instance"
    t = registry.set_manual(region_id, None, now, wall, reason)
    if t is not None:
        effects.transitions.append(t)
    effects.check_now.append(region_id)
