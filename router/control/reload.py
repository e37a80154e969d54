"""Config reload, decided synchronously: ``plan_reload`` over the registry and the book.

A reload reads the file, validates it fully (an invalid one changes nothing and is
reported), then swaps it in atomically: regions with an unchanged id and endpoint keep their
health, latency and failover state; the diff says what changed. Operations on regions that
left the file (or changed endpoint) end. ``plan_reload`` does the swap in one step with no
await in it and returns what is left to do; ``Control`` holds the lock around it, then
probes the new region set and stores the state (router/control/core.py). The file watcher
that asks for a reload is router/control/watch.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.config.diff import ReloadResult, diff_configs
from router.config.loader import Config
from router.state.operations import OperationBook
from router.state.registry import Registry


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    result: ReloadResult  # ok, with the diff (``Control`` adds a note if storing fails)
    ops_changed: bool  # operations ended: store the book as well as the regions


def plan_reload(
    registry: Registry, ops: OperationBook, new: Config, source: str, now: float, wall: float
) -> ReloadPlan:
    """Swap the validated ``new`` config into the registry; end operations it invalidates."""
    diff = diff_configs(registry.config, new)
    before = {r.config.id: (r.config.endpoint, set(r.overrides)) for r in registry.records()}
    registry.apply_config(new, now)
    by_id = registry.snapshot().by_id
    ops_changed = False
    for region_id in list(ops.active):
        view = by_id.get(region_id)
        if view is None:
            why = "region removed from the config file"
        elif view.endpoint != before[region_id][0]:
            why = "region endpoint changed in the config file"
        else:
            continue
        ops.end(region_id, wall, why)
        ops_changed = True
        diff.notes.append(f"{region_id}: failover operation ended ({why})")
    for rec in registry.records():
        prev = before.get(rec.config.id)
        if prev is not None and rec.config.endpoint == prev[0]:
            for name in sorted(prev[1] - set(rec.overrides)):
                diff.notes.append(
                    f"{rec.config.id}: runtime override of {name} dropped "
                    "(the config file changed it)"
                )
    result = ReloadResult(ok=True, source=source, at=wall, diff=diff, config_hash=new.config_hash)
    return ReloadPlan(result, ops_changed)
