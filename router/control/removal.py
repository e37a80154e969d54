"""Removing a runtime region: it drains (no new requests; in-flight ones finish within a
grace period), then leaves the registry. One task per region, so a second DELETE, or the
same removal arriving from another instance, waits for the first.

``Control`` persists the removal before it begins (a crash while draining does not bring
the region back); the end, under ``Control.lock``, ends the region's failover operation and
drops it from the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from router.control.persist import ControlState
from router.errors import UnknownRegion
from router.runtime import Runtime
from router.state.operations import OperationBook
from router.store.files import StoreWriteError

log = logging.getLogger("router.control.core")

REMOVAL_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class RemovalResult:
    region: str
    drained: bool  # no request was still in flight when the region went
    waited_s: float


class Removals:
    def __init__(
        self,
        runtime: Runtime,
        lock: asyncio.Lock,
        ops: OperationBook,
        state: ControlState,
        wall: Callable[[], float],
    ) -> None:
        self.runtime = runtime
        self.registry = runtime.registry
        self.lock = lock  # Control's: the end of a removal is a write like any other
        self.ops = ops
        self.state = state
        self.wall = wall
        self.pending: dict[str, asyncio.Task[RemovalResult]] = {}

    def __repr__(self) -> str:
        return f"<Removals pending={sorted(self.pending)}>"

    def begin(
        self, region_id: str, grace_s: float | None, reason: str
    ) -> asyncio.Task[RemovalResult]:
        """Drain the region now and remove it after its in-flight requests (persisted already)."""
        self.registry.set_removing(region_id, True)
        t = self.registry.set_manual(region_id, "draining", time.monotonic(), self.wall(), reason)
        if t is not None:
            self.runtime.record_transition(t)
        grace = self.registry.config.shutdown_grace_s if grace_s is None else grace_s
        pending = asyncio.get_running_loop().create_task(
            self._finish(region_id, grace), name=f"remove:{region_id}"
        )
        self.pending[region_id] = pending
        return pending

    async def _finish(self, region_id: str, grace_s: float) -> RemovalResult:
        started = time.monotonic()
        deadline = started + grace_s
        load = self.runtime.loads.get(region_id)
        try:
            while load.inflight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110  # hot-path counters: poll, no per-request signal
                await asyncio.sleep(REMOVAL_POLL_S)
            drained = load.inflight == 0
            async with self.lock:
                if self.ops.end(region_id, self.wall(), "region removed") is not None:
                    try:
                        await self.state.save_ops()
                    except StoreWriteError as exc:
                        log.error("region %s removed, but %s", region_id, exc)
                with contextlib.suppress(UnknownRegion):
                    self.registry.remove_region(region_id, time.monotonic())
            self.runtime.health.sync()
            log.info("region %s removed (drained=%s)", region_id, drained)
            return RemovalResult(region_id, drained, round(time.monotonic() - started, 3))
        finally:
            self.pending.pop(region_id, None)
