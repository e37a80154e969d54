"""Control-plane writes: register, patch, remove, reload; manual failover in failover.py.

The admin API is HTTP glue over this class; with worker processes the supervisor runs it.
Each write validates, changes the registry, persists, and only then answers; when the
state cannot be written the change is rolled back (``StoreWriteError``), so an answer of
"done" always means "done and stored". The store is ``state_dir`` files, or Redis shared
with other instances (``state.backend: redis``): their changes are applied here under the
same ``lock`` as the writes, so a write and its rollback are never interleaved with another
instance's change (router/control/remote.py decides what they change; this class does the
locking and the I/O, as for a reload: router/control/reload.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from router.cluster.core import Cluster
from router.config.diff import ReloadResult, read_config_text
from router.config.loader import Config, ConfigError, FieldError, RegionConfig, parse_config
from router.control import remote
from router.control.certwatch import CertificateWatcher
from router.control.failover import Failovers, writable
from router.control.persist import ControlState
from router.control.reload import plan_reload
from router.control.removal import RemovalResult, Removals
from router.control.watch import ConfigWatcher
from router.errors import RegionConflict
from router.monitoring.alerts import AlertEngine
from router.monitoring.window import TrafficWindow
from router.replication.engine import ReplicationEngine
from router.replication.inventory import ArtifactInventory
from router.runtime import Runtime
from router.state.operations import OperationBook
from router.state.registry import Transition
from router.state.snapshot import RegionView
from router.store.docs import region_key
from router.store.files import FileStateStore, StateStore, StoreConflict, StoreWriteError
from router.store.redis import RedisStateStore

log = logging.getLogger("router.control.core")

HOUSEKEEPING_S = 0.25

__all__ = ["Control", "ReloadResult", "RemovalResult"]


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
        config = runtime.registry.config
        self.store: StateStore
        if config.state.backend == "redis":
            self.store = RedisStateStore(
                config.state, Path(config.state_dir), runtime.instance_id, runtime.metrics
            )
        else:
            self.store = FileStateStore(Path(config.state_dir))
        self.lock = asyncio.Lock()  # one change at a time: local writes and other instances'
        self.ops = OperationBook()
        self.state = ControlState(
            self.registry, self.store, self.ops, runtime.record_transition, runtime.instance_id
        )
        self.removals = Removals(runtime, self.lock, self.ops, self.state, wall)
        self.failovers = Failovers(runtime, self.lock, self.ops, self.state, wall)
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
        self._history_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.watcher: ConfigWatcher | None = None
        self._reload_lock = asyncio.Lock()
        self._pending: set[asyncio.Task[ReloadResult]] = set()
        runtime.transition_hooks.append(self._on_transition)
        self.alerts = AlertEngine(self, wall=wall)
        self.cluster: Cluster | None = None
        if isinstance(self.store, RedisStateStore):
            self.cluster = Cluster(
                runtime, self.replication, self.store, apply_change=self._apply_remote
            )

    def __repr__(self) -> str:
        return (
            f"<Control regions={len(self.registry.snapshot().regions)} "
            f"operations={len(self.ops.active)} removing={len(self.removals.pending)}>"
        )

    # -- start-up ----------------------------------------------------------------------

    async def restore(self) -> None:
        """Load persisted state; raises StateFormatError for files from a newer version."""
        await self.store.open()
        self.state.restore(time.monotonic(), self.wall())
        self.inventory.restore()  # after the regions: copies belong to known regions
        self.replication.restore()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # The baseline: traffic from the first second on shows in rates and percentiles.
        self.window.sample(self.runtime.merged_stats(), time.monotonic())
        self._tasks.append(loop.create_task(self._housekeeping(), name="control-housekeeping"))
        if self.config_path:
            self.watcher = ConfigWatcher(
                self.config_path, lambda: self.registry.config.reload, lambda: self.reload("watch")
            )
            self._tasks.append(loop.create_task(self.watcher.run(), name="config-watch"))
            certs = CertificateWatcher(lambda: self.registry.config, lambda: self.reload("watch"))
            self._tasks.append(loop.create_task(certs.run(), name="certificate-watch"))
        await self.alerts.start()
        await self.replication.start()
        await self.store.start()
        if self.cluster is not None:
            await self.cluster.start()

    async def stop(self) -> None:
        if self.cluster is not None:
            await self.cluster.stop()
        await self.replication.stop()
        await self.alerts.stop()
        tasks = [*self._tasks, *self.removals.pending.values(), *self._pending]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self.removals.pending.clear()
        if self._history_dirty:
            with contextlib.suppress(StoreWriteError):
                await self.state.save_history()
        await self.store.close()

    # -- regions -----------------------------------------------------------------------

    async def register(self, rc: RegionConfig) -> RegionView:
        async with self.lock:
            if rc.id in self.registry.snapshot().by_id:
                raise RegionConflict(f"region {rc.id!r} already exists")
            self.registry.add_region(rc, time.monotonic())
            try:
                await self.state.save_regions(create=region_key(rc.id))
            except (StoreWriteError, StoreConflict) as exc:
                self.registry.remove_region(rc.id, time.monotonic())
                if isinstance(exc, StoreConflict):
                    raise RegionConflict(
                        f"region {rc.id!r} already exists (registered on another instance)"
                    ) from None
                raise
        self.runtime.health.sync()  # probed at once; serves after its first passing check
        return self.registry.snapshot().by_id[rc.id]

    async def patch(self, region_id: str, changes: dict[str, object]) -> RegionView:
        async with self.lock:
            writable(self.registry, region_id)
            old_config, old_overrides = self.registry.region_config(region_id)
            self.registry.update_region(region_id, time.monotonic(), **changes)
            try:
                await self.state.save_regions()
            except StoreWriteError:
                self.registry.restore_region(region_id, old_config, old_overrides, time.monotonic())
                raise
        return self.registry.snapshot().by_id[region_id]

    async def delete(self, region_id: str, grace_s: float | None = None) -> RemovalResult:
        """Drain a runtime region (no new requests; in-flight ones finish), then remove it.

        The removal is persisted first, so a crash while draining does not bring the region
        back. A second DELETE while one drains waits for the same removal.
        """
        pending = self.removals.pending.get(region_id)
        if pending is None:
            async with self.lock:
                rec = self.registry.record(region_id)
                if rec.source == "config":
                    raise RegionConflict(
                        f"region {region_id!r} is defined in the config file: remove it from "
                        "the file and reload (POST /admin/reload)"
                    )
                pending = self.removals.pending.get(region_id)
                if pending is None:
                    self.registry.set_removing(region_id, True)
                    try:
                        await self.state.save_regions()
                    except StoreWriteError:
                        self.registry.set_removing(region_id, False)
                        raise
                    pending = self.removals.begin(region_id, grace_s, "removal requested")
        return await asyncio.shield(pending)

    # -- other instances' changes (router/control/remote.py) ----------------------------

    async def _apply_remote(self, kind: str, entries: dict[str, Any], deleted: list[str]) -> None:
        """The shared store's ``on_change``: another instance's change, under the write lock."""
        assert self.cluster is not None
        async with self.lock:
            try:
                now = time.monotonic()
                if kind == "regions":
                    self._carry_out(remote.apply_regions(self.registry, entries, deleted, now))
                elif kind == "operations":
                    self._carry_out(
                        remote.apply_operations(
                            self.registry, self.ops, entries, deleted, now, self.wall()
                        )
                    )
                elif kind == "replications":
                    self.replication.apply_remote(entries, deleted)
                elif kind == "artifacts":
                    self.inventory.apply_remote(entries, deleted)
            except Exception:
                log.exception("cannot apply a %s change from another instance", kind)
                return
            self.cluster.applied += 1

    def _carry_out(self, effects: remote.Effects) -> None:
        for t in effects.transitions:
            self.runtime.record_transition(t)
        for region_id in effects.check_now:
            self.runtime.health.check_now(region_id)
        for region_id in effects.removals:
            _ = self.removals.begin(region_id, None, "removed on another instance")
        if effects.sync_probes:
            self.runtime.health.sync()
        if effects.problems and self.cluster is not None:
            self.cluster.store.problem("regions", "; ".join(map(str, effects.problems)))

    # -- reload (router/control/reload.py, router/control/watch.py) ----------------------

    async def reload(self, source: str) -> ReloadResult:
        """Read, validate and apply the config file; an invalid one changes nothing."""
        async with self._reload_lock:
            result = await self._reload_file(source)
            self.last_reload = result
            self.runtime.config_reloads.labels("success" if result.ok else "error").inc()
            if result.ok:
                diff = result.diff.to_json() if result.diff else {}
                log.info("config reloaded (%s): %s", source, diff)
            else:
                log.error(
                    "config reload (%s) rejected; the old config keeps serving: %s",
                    source,
                    "; ".join(str(e) for e in result.errors),
                )
            return result

    async def _reload_file(self, source: str) -> ReloadResult:
        old_hash = self.registry.config.config_hash
        if not self.config_path:
            errors = [FieldError("config", "this router was started without a config file")]
            return ReloadResult(False, source, self.wall(), errors, config_hash=old_hash)
        try:
            text, digest = read_config_text(self.config_path)
            if self.watcher is not None:
                self.watcher.seen = digest  # this content has been seen, good or bad
            new = parse_config(text)
        except ConfigError as exc:
            return ReloadResult(False, source, self.wall(), list(exc.errors), config_hash=old_hash)
        return await self.apply_config(new, source)

    def request_reload(self, source: str) -> None:
        """Reload soon (from a signal handler): the task is kept until it is done."""
        task = asyncio.get_running_loop().create_task(self.reload(source), name="reload")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def apply_config(self, new: Config, source: str) -> ReloadResult:
        """Swap in a validated config atomically; regions with unchanged endpoints keep state."""
        async with self.lock:
            plan = plan_reload(self.registry, self.ops, new, source, time.monotonic(), self.wall())
            self.runtime.health.sync()
            try:
                if plan.ops_changed:
                    await self.state.save_ops()
                await self.state.save_regions()
            except StoreWriteError as exc:
                log.error("config applied, but the state files were not updated: %s", exc)
                assert plan.result.diff is not None
                plan.result.diff.notes.append(f"state not saved: {exc}")
            return plan.result

    # -- housekeeping and persistence --------------------------------------------------

    async def _housekeeping(self) -> None:
        next_sample = 0.0
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            try:
                next_sample = await self._housekeeping_step(next_sample)
            except Exception:
                log.exception("control housekeeping failed; continuing")

    async def _housekeeping_step(self, next_sample: float) -> float:
        await self.failovers.expire()
        now = time.monotonic()
        if now >= next_sample:
            next_sample = now + 1.0
            self.window.sample(self.runtime.merged_stats(), now)
        if self._history_dirty:
            self._history_dirty = False
            try:
                await self.state.save_history()
            except StoreWriteError as exc:
                self._history_dirty = True
                if str(exc) != self._history_error:
                    log.error("history not saved (will retry): %s", exc)
                self._history_error = str(exc)
            else:
                self._history_error = None
        return next_sample

    def _on_transition(self, t: Transition) -> None:
        self._history_dirty = True
