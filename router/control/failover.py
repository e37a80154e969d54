"""Manual failover operations: start one, end it (recover, undo, expiry), each stored first.

An operation holds a region out of rotation by hand (``failed_over``), optionally sending
its sticky sessions to a target and draining for a while. It is stored before the region
changes, so an answer means "done and stored"; when storing fails, the operation book is
rolled back and nothing changed. An operation that expires while the store is down ends
here on time and is stored when the store is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from router.control.persist import ControlState
from router.errors import NotFound, RegionConflict, UnknownRegion
from router.runtime import Runtime
from router.state.operations import FailoverOperation, OperationBook
from router.state.registry import RegionRecord, Registry
from router.store.docs import operation_key
from router.store.files import StoreConflict, StoreWriteError

log = logging.getLogger("router.control.core")


def writable(registry: Registry, region_id: str) -> RegionRecord:
    """The region's record; RegionConflict while it is being removed (it takes no writes)."""
    rec = registry.record(region_id)
    if rec.removing:
        raise RegionConflict(f"region {region_id!r} is being removed")
    return rec


class Failovers:
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
        self.lock = lock  # Control's: an operation is a write like any other
        self.ops = ops
        self.state = state
        self.wall = wall
        self.unstored = False  # an end applied here (an expiry), not yet stored

    def __repr__(self) -> str:
        return f"<Failovers active={sorted(self.ops.active)} unstored={self.unstored}>"

    async def failover(
        self,
        region_id: str,
        *,
        target: str | None = None,
        drain_s: float = 0.0,
        reason: str = "",
        expires_s: float | None = None,
    ) -> FailoverOperation:
        async with self.lock:
            return await self._failover(region_id, target, drain_s, reason, expires_s)

    async def _failover(
        self,
        region_id: str,
        target: str | None,
        drain_s: float,
        reason: str,
        expires_s: float | None,
    ) -> FailoverOperation:
        writable(self.registry, region_id)
        snap = self.registry.snapshot()
        if target is not None:
            if target not in snap.by_id:
                raise UnknownRegion(target)
            if target == region_id:
                raise RegionConflict("the failover target must be another region")
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
        try:
            with self._rollback():
                self.ops.start(op)
                await self.state.save_ops(create=operation_key(region_id))
        except StoreConflict as exc:
            other = exc.current.get("id") if isinstance(exc.current, dict) else None
            raise RegionConflict(
                f"region {region_id!r} is already failed over (operation {other}, started on "
                "another instance)"
            ) from None
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

    async def recover(
        self, region_id: str, reason: str = "manual recover"
    ) -> FailoverOperation | None:
        """End the region's failover (if any) and put it back after its next passing check.

        Returns the ended operation; None when the region was not held out by hand.
        """
        async with self.lock:
            return await self._recover(region_id, reason)

    async def _recover(self, region_id: str, reason: str) -> FailoverOperation | None:
        rec = writable(self.registry, region_id)
        if region_id not in self.ops.active and rec.manual is None:
            return None
        wall = self.wall()
        with self._rollback():
            op = self.ops.end(region_id, wall, reason)
            if op is not None:
                await self.state.save_ops()
        t = self.registry.set_manual(region_id, None, time.monotonic(), wall, reason)
        if t is not None:
            self.runtime.record_transition(t)
        self.runtime.health.check_now(region_id)
        return op

    async def undo(self, op_id: str) -> FailoverOperation:
        async with self.lock:
            op = self.ops.get(op_id)
            if op is None:
                raise NotFound(f"no failover operation with id {op_id!r}")
            if op.state != "active":
                raise RegionConflict(f"operation {op_id} already ended ({op.ended_reason})")
            ended = await self._recover(op.region, reason=f"undo of {op_id}")
            assert ended is not None
            return ended

    async def expire(self) -> None:
        """End the operations whose time is up; store ends that could not be stored before."""
        for op in self.ops.expired(self.wall()):
            reason = f"operation {op.id} expired"
            try:
                await self.recover(op.region, reason=reason)
            except StoreWriteError as exc:
                # The operator set this end: honour it on time here, store it when possible.
                log.warning("operation %s expired; ended here, to be stored: %s", op.id, exc)
                async with self.lock:
                    self._end_unstored(op.region, reason)
            except (UnknownRegion, RegionConflict):
                self.ops.end(op.region, self.wall(), reason)
        if self.unstored:
            async with self.lock:
                with contextlib.suppress(StoreWriteError):
                    await self.state.save_ops()
                    self.unstored = False

    def _end_unstored(self, region_id: str, reason: str) -> None:
        self.unstored = True
        if self.ops.end(region_id, self.wall(), reason) is None:
            return
        t = self.registry.set_manual(region_id, None, time.monotonic(), self.wall(), reason)
        if t is not None:
            self.runtime.record_transition(t)
        self.runtime.health.check_now(region_id)

    @contextlib.contextmanager
    def _rollback(self) -> Iterator[None]:
        saved = self.ops.checkpoint()
        try:
            yield
        except (StoreWriteError, StoreConflict):
            self.ops.rollback(saved)
            raise
