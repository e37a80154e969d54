"""Replication jobs run once among several instances: whoever holds a job's lease runs it.

A lease is a Redis key ``<prefix>:lease:job:<id>`` set with NX and a time to live of
``replication.lease`` (default 15 s), renewed every third of that. The instance that takes
a job at submission runs it; every instance looks for active jobs nobody holds (their
runner died: the lease ran out) and takes them over, resuming from the stored progress
(verified targets are not copied again). An instance that cannot renew (Redis unreachable)
for a whole lease stops its runs: by then another may hold the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from router.cluster.coordination import Coordination
from router.replication.engine import ReplicationEngine
from router.store.files import StoreWriteError
from router.store.redis import RedisStateStore

log = logging.getLogger("router.replication.engine")

LEASE_CHECK_MIN_S = 0.05


class JobLeases:
    """The engine's ``coordinator`` with a shared store."""

    def __init__(self, engine: ReplicationEngine, store: RedisStateStore) -> None:
        self.engine = engine
        self.store = store
        self.coordination = Coordination(store)
        self.held: dict[str, float] = {}  # job id -> monotonic time of the last renewal
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<JobLeases held={len(self.held)} lease={self.lease_s}s>"

    @property
    def lease_s(self) -> float:
        return self.engine.config.lease_s

    def _ttl_ms(self) -> int:
        return max(1, int(self.lease_s * 1000))

    async def acquire(self, job_id: str) -> bool:
        try:
            got = await self.coordination.acquire_lease(f"job:{job_id}", self._ttl_ms())
        except StoreWriteError:
            return False
        if got:
            self.held[job_id] = time.monotonic()
        return got

    async def release(self, job_id: str) -> None:
        if self.held.pop(job_id, None) is None:
            return
        with contextlib.suppress(StoreWriteError):  # else it runs out on its own
            await self.coordination.release_lease(f"job:{job_id}")

    def status(self) -> dict[str, Any]:
        return {"lease_s": self.lease_s, "held": sorted(self.held)}

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="job-leases")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(max(LEASE_CHECK_MIN_S, self.lease_s / 3))
            try:
                await self.step()
            except Exception:
                log.exception("replication leases: check failed; continuing")

    async def step(self) -> None:
        """Renew what we run, let go of what we lost, take over what nobody holds."""
        engine = self.engine
        now = time.monotonic()
        for job_id, renewed_at in list(self.held.items()):
            if not engine.running(job_id):
                await self.release(job_id)
                continue
            try:
                kept = await self.coordination.renew_lease(f"job:{job_id}", self._ttl_ms())
            except StoreWriteError:
                if now - renewed_at > self.lease_s:
                    log.warning(
                        "replication %s: lease not renewed for %.0fs (state store "
                        "unreachable); stopping here, it resumes where a lease is held",
                        job_id,
                        self.lease_s,
                    )
                    self.held.pop(job_id, None)
                    engine.abandon(job_id)
                continue
            if kept:
                self.held[job_id] = now
            else:
                log.warning("replication %s: another instance holds the lease; stopping", job_id)
                self.held.pop(job_id, None)
                engine.abandon(job_id)
        if not self.store.connected:
            return
        for job in list(engine.jobs.values()):
            free = job.active and not engine.running(job.id) and job.id not in self.held
            if free and await self.acquire(job.id):
                engine.adopt(job)
