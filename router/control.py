"""Control-plane operations: register, patch, remove, fail over, recover, reload, persist.

The admin API is HTTP glue over this class; with worker processes the supervisor runs it.
Every operation validates, mutates the registry synchronously, persists, then answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.alerts import AlertEngine
from router.config import (
    Config,
    ConfigError,
    FieldError,
    RegionConfig,
    load_config,
    parse_region,
    to_plain,
)
from router.errors import NotFound, RegionConflict, UnknownRegion
from router.inventory import ArtifactInventory
from router.operations import FailoverOperation, OperationBook
from router.registry import Transition
from router.reload import ConfigDiff, diff_configs
from router.replication import ReplicationEngine
from router.runtime import Runtime
from router.snapshot import RegionState, RegionView
from router.store import FileStateStore
from router.window import TrafficWindow

log = logging.getLogger("router.control")

HISTORY_KEEP = 1000


@dataclass(slots=True)
class ReloadResult:
    ok: bool
    source: str
    at: float
    errors: list[FieldError] = field(default_factory=list)
    diff: ConfigDiff | None = None
    config_hash: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "source": self.source, "at": self.at}
        if self.errors:
            out["errors"] = [{"path": e.path, "message": e.message} for e in self.errors]
        if self.diff is not None:
            out["diff"] = self.diff.to_json()
        out["config_hash"] = self.config_hash
        return out


class Control:
    def __init__(
        self,
        runtime: Runtime,
        *,
        config_path: str | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.runtime = runtime
        self.registry = runtime.registry
        self.config_path = config_path
        self.wall = wall
        self.store = FileStateStore(Path(runtime.registry.config.state_dir))
        self.ops = OperationBook()
        self.window = TrafficWindow()
        self.inventory = ArtifactInventory(self.registry, self.store, wall=wall)
        self.replication = ReplicationEngine(
            self.registry,
            self.store,
            self.inventory,
            runtime.metrics,
            instance_id=runtime.instance_id,
            wall=wall,
        )
        self.last_reload: ReloadResult | None = None
        self._history_dirty = False
        self._tasks: list[asyncio.Task[None]] = []
        self._watch_sig: tuple[float, int, str] | None = None
        self._reload_lock = asyncio.Lock()
        runtime.transition_hooks.append(self._on_transition)
        self.alerts = AlertEngine(self, wall=wall)

    # -- start-up ----------------------------------------------------------------------

    def restore(self) -> None:
        """Load persisted state; raises StateFormatError for files from a newer version."""
        now, wall = time.monotonic(), self.wall()
        regions = self.store.load("regions") or {}
        for i, data in enumerate(regions.get("runtime", [])):
            errors: list[FieldError] = []
            rc = parse_region(data, f"regions.json runtime[{i}]", errors)
            if rc is None:
                self.store._problem("regions", "; ".join(map(str, errors)), None)
                continue
            if rc.id in self.registry.snapshot().by_id:
                log.warning(
                    "runtime region %s is now defined in the config; keeping the file's", rc.id
                )
                continue
            self.registry.add_region(rc, now)
        for region_id, changes in (regions.get("overrides") or {}).items():
            with contextlib.suppress(UnknownRegion):
                self.registry.update_region(region_id, now, **changes)
        ops = self.store.load("operations")
        if ops:
            self.ops.load_json(ops)
            for op in list(self.ops.active.values()):
                if op.region not in self.registry.snapshot().by_id:
                    self.ops.end(op.region, wall, "region no longer exists")
                    continue
                self.registry.set_manual(
                    op.region,
                    "failed_over",
                    now,
                    wall,
                    f"restored operation {op.id}",
                    target=op.target,
                )
        history = self.store.load("history") or []
        for item in history[-HISTORY_KEEP:]:
            with contextlib.suppress(KeyError, ValueError, TypeError):
                self.registry.history.append(
                    Transition(
                        at=float(item["at"]),
                        region=str(item["region"]),
                        from_state=RegionState(item["from"]),
                        to_state=RegionState(item["to"]),
                        reason=str(item["reason"]),
                    )
                )
        self.inventory.restore()  # after the regions: copies belong to known regions
        self.replication.restore()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._housekeeping(), name="control-housekeeping"))
        cfg = self.registry.config
        if cfg.reload.watch and self.config_path:
            self._watch_sig = self._file_signature()
            self._tasks.append(loop.create_task(self._watch(), name="config-watch"))
        await self.alerts.start()
        await self.replication.start()

    async def stop(self) -> None:
        await self.replication.stop()
        await self.alerts.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._history_dirty:
            self._save_history()

    # -- regions -----------------------------------------------------------------------

    def register(self, rc: RegionConfig) -> RegionView:
        if rc.id in self.registry.snapshot().by_id:
            raise RegionConflict(f"region {rc.id!r} already exists")
        self.registry.add_region(rc, time.monotonic())
        self._save_regions()
        self.runtime.health.sync()
        return self.registry.snapshot().by_id[rc.id]

    def patch(self, region_id: str, changes: dict[str, object]) -> RegionView:
        self.registry.update_region(region_id, time.monotonic(), **changes)
        self._save_regions()
        return self.registry.snapshot().by_id[region_id]

    async def delete(self, region_id: str, grace_s: float | None = None) -> None:
        """Drain a runtime region (no new requests; in-flight finish), then remove it."""
        rec = self.registry.record(region_id)
        if rec.source == "config":
            raise RegionConflict(
                f"region {region_id!r} is defined in the config file; remove it there and reload"
            )
        now, wall = time.monotonic(), self.wall()
        self.registry.set_manual(region_id, "draining", now, wall, "removal requested")
        grace = self.registry.config.shutdown_grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        load = self.runtime.core.loads.get(region_id)
        # In-flight counts are plain hot-path counters: poll rather than signal per request.
        while load.inflight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        self.ops.end(region_id, self.wall(), "region removed")
        self.registry.remove_region(region_id, time.monotonic())
        self.runtime.health.sync()
        self._save_regions()
        self._save_ops()

    # -- failover operations -----------------------------------------------------------

    def failover(
        self,
        region_id: str,
        *,
        target: str | None = None,
        drain_s: float = 0.0,
        reason: str = "",
        expires_s: float | None = None,
    ) -> FailoverOperation:
        snap = self.registry.snapshot()
        if region_id not in snap.by_id:
            raise UnknownRegion(region_id)
        if target is not None:
            if target not in snap.by_id:
                raise UnknownRegion(target)
            if target == region_id:
                raise RegionConflict("target must be another region")
        if region_id in self.ops.active:
            op = self.ops.active[region_id]
            raise RegionConflict(f"region {region_id!r} is already failed over (operation {op.id})")
        wall = self.wall()
        op = FailoverOperation(
            id=FailoverOperation.new_id(),
            region=region_id,
            target=target,
            reason=reason or "manual failover",
            drain_s=drain_s,
            created_at=wall,
            expires_at=wall + expires_s if expires_s else None,
        )
        self.ops.start(op)
        self._save_ops()
        t = self.registry.set_manual(
            region_id,
            "failed_over",
            time.monotonic(),
            wall,
            f"manual failover {op.id}: {op.reason}",
            drain_s=drain_s,
            target=target,
        )
        if t is not None:
            self.runtime.record_transition(t)
        return op

    def recover(self, region_id: str, reason: str = "manual recover") -> FailoverOperation | None:
        self.registry.record(region_id)
        wall = self.wall()
        op = self.ops.end(region_id, wall, reason)
        rec = self.registry.record(region_id)
        if op is None and rec.manual is None:
            return None
        self._save_ops()
        t = self.registry.set_manual(region_id, None, time.monotonic(), wall, reason)
        if t is not None:
            self.runtime.record_transition(t)
        self.runtime.health.check_now(region_id)
        return op

    def undo(self, op_id: str) -> FailoverOperation:
        op = self.ops.get(op_id)
        if op is None:
            raise NotFound(f"no failover operation with id {op_id!r}")
        if op.state != "active":
            raise RegionConflict(f"operation {op_id} already ended ({op.ended_reason})")
        self.recover(op.region, reason=f"undo {op_id}")
        return op

    # -- reload ------------------------------------------------------------------------

    async def reload(self, source: str) -> ReloadResult:
        async with self._reload_lock:
            return self._reload(source)

    def _reload(self, source: str) -> ReloadResult:
        wall = self.wall()
        old = self.registry.config
        if not self.config_path:
            result = ReloadResult(
                ok=False,
                source=source,
                at=wall,
                errors=[FieldError("config", "this router was started without a config file")],
            )
        else:
            try:
                new = load_config(self.config_path)
            except ConfigError as exc:
                result = ReloadResult(
                    ok=False,
                    source=source,
                    at=wall,
                    errors=list(exc.errors),
                    config_hash=old.config_hash,
                )
            else:
                result = self.apply_config(new, source)
        self.last_reload = result
        self.runtime.config_reloads.labels("success" if result.ok else "error").inc()
        if result.ok:
            log.info(
                "config reloaded (%s): %s", source, result.diff.to_json() if result.diff else {}
            )
        else:
            log.error(
                "config reload (%s) rejected; the old config keeps serving: %s",
                source,
                "; ".join(str(e) for e in result.errors),
            )
        return result

    def apply_config(self, new: Config, source: str) -> ReloadResult:
        old = self.registry.config
        diff = diff_configs(old, new)
        runtime_ids = {r.config.id for r in self.registry.records() if r.source == "runtime"}
        clash = [r.id for r in new.regions if r.id in runtime_ids]
        for rid in clash:  # the file now owns a region registered at runtime
            rec = self.registry.record(rid)
            rec.source = "config"
        self.registry.apply_config(new, time.monotonic())
        self.runtime.health.sync()
        self._save_regions()
        self._watch_sig = self._file_signature()
        return ReloadResult(
            ok=True, source=source, at=self.wall(), diff=diff, config_hash=new.config_hash
        )

    def _file_signature(self) -> tuple[float, int, str] | None:
        if not self.config_path:
            return None
        try:
            p = Path(self.config_path)
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError:
            return None
        return (st.st_mtime, st.st_size, digest)

    async def _watch(self) -> None:
        debounce = self.registry.config.reload.debounce_s
        while True:
            await asyncio.sleep(max(0.2, debounce))
            sig = self._file_signature()
            if sig is None or sig == self._watch_sig:
                continue
            if self._watch_sig is not None and sig[2] == self._watch_sig[2]:
                self._watch_sig = sig
                continue
            # Debounce: wait until the file stops changing for one period.
            await asyncio.sleep(debounce)
            if self._file_signature() != sig:
                continue
            self._watch_sig = sig
            await self.reload("watch")

    # -- housekeeping and persistence --------------------------------------------------

    async def _housekeeping(self) -> None:
        next_sample = 0.0
        while True:
            await asyncio.sleep(0.25)
            wall = self.wall()
            for op in self.ops.expired(wall):
                self.recover(op.region, reason=f"operation {op.id} expired")
            now = time.monotonic()
            if now >= next_sample:
                next_sample = now + 1.0
                self.window.sample(self.runtime.merged_stats(), now)
            if self._history_dirty:
                self._save_history()

    def _on_transition(self, t: Transition) -> None:
        self._history_dirty = True

    def _save_history(self) -> None:
        self._history_dirty = False
        self.store.save(
            "history",
            [
                {
                    "at": t.at,
                    "region": t.region,
                    "from": t.from_state.value,
                    "to": t.to_state.value,
                    "reason": t.reason,
                }
                for t in self.registry.history
            ],
        )

    def _save_regions(self) -> None:
        runtime_regions = []
        overrides: dict[str, dict[str, Any]] = {}
        for rec in self.registry.records():
            if rec.source == "runtime":
                runtime_regions.append(region_config_json(rec.config))
            elif rec.overrides:
                overrides[rec.config.id] = to_plain(rec.overrides)
        self.store.save("regions", {"runtime": runtime_regions, "overrides": overrides})

    def _save_ops(self) -> None:
        self.store.save("operations", self.ops.to_json())


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
    return out
