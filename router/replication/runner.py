"""One run of one replication job: spool the source once, copy to every target, verify.

``JobRunner.run`` changes the job's progress fields and saves through the engine's
``save``; it returns how the job ends, and ``ReplicationEngine`` finishes it (state,
metrics, lease). A spool that is still intact is reused, so a resumed job does not read
the source again, and verified targets are not copied again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from router.config.loader import ReplicationConfig
from router.replication.copier import Copier, JobFailed
from router.replication.inventory import ArtifactInventory
from router.replication.jobs import Job, JobState, TargetProgress, TargetState
from router.replication.transfer import SpoolError, TransferError, hash_file
from router.state.registry import Registry
from router.state.snapshot import RegionView

log = logging.getLogger("router.replication.engine")


class JobRunner:
    def __init__(
        self,
        job: Job,
        copier: Copier,
        *,
        registry: Registry,
        inventory: ArtifactInventory,
        spool_dir: Path,
        save: Callable[[], Awaitable[None]],
        wall: Callable[[], float],
    ) -> None:
        self.job = job
        self.copier = copier
        self.registry = registry
        self.inventory = inventory
        self.spool_dir = spool_dir
        self.save = save
        self.wall = wall

    @property
    def config(self) -> ReplicationConfig:
        return self.registry.config.replication

    async def run(self) -> tuple[JobState, str | None]:
        """Copy everything; the job's end state and error. Raises JobFailed to stop at once."""
        job = self.job
        spool = await self._spool()
        limit = asyncio.Semaphore(self.config.concurrency)

        async def one(t: TargetProgress) -> None:
            async with limit:
                await self._copy_target(t, spool)

        await asyncio.gather(*(one(t) for t in job.targets if not t.done))
        failed = [t for t in job.targets if t.state is TargetState.FAILED]
        if not failed:
            return JobState.SUCCEEDED, None
        detail = "; ".join(f"{t.region}: {t.last_error}" for t in failed)
        return JobState.FAILED, f"{len(failed)} of {len(job.targets)} failed: {detail}"

    async def _spool(self) -> Path:
        """The spool of the job's source bytes: reused when intact, else read (again)."""
        job = self.job
        spool = self.spool_dir / f"{job.id}.spool"
        if job.sha256 is not None and spool.exists():
            digest, size = await hash_file(spool)  # never copy a torn spool
            if digest == job.sha256:
                job.fetched_bytes = size
                return spool
            log.warning("replication %s: spool damaged; reading the source again", job.id)
        source = self._region(job.source, "source")
        first = job.sha256 is None
        read = await self.copier.read_source(job, source)
        if not first and read.sha256 != job.sha256:
            raise JobFailed(
                f"the source changed since the job started (sha256 was {job.sha256}, now "
                f"{read.sha256}); nothing more is copied"
            )
        job.sha256, job.size_bytes = read.sha256, read.size
        if first:
            job.read_at, job.validators = self.wall(), read.validators
            await self.inventory.record_source(job.name, job.source, job.read_at)
        part = self.spool_dir / f"{job.id}.part"
        part.replace(spool)
        await self.save()
        return spool

    async def _copy_target(self, t: TargetProgress, spool: Path) -> None:
        job, copier = self.job, self.copier
        assert job.sha256 is not None and job.size_bytes is not None
        attempts = self.config.attempts
        while t.attempts < attempts:
            region = self.registry.snapshot().by_id.get(t.region)
            if region is None:
                t.last_error = "the region was removed"
                break
            t.attempts += 1
            t.state, t.bytes = TargetState.COPYING, 0
            await self.save()

            def progress(n: int) -> None:
                t.bytes += n

            try:
                report = await copier.put(job, region, spool, progress)
                t.state = TargetState.VERIFYING
                await self.save()
                verified_by = await copier.verify(job, region, report)
            except SpoolError as exc:
                raise JobFailed(str(exc)) from None
            except TransferError as exc:
                t.last_error = str(exc)
                log.warning("replication %s: %s try %d: %s", job.id, t.region, t.attempts, exc)
                if not exc.retryable or t.attempts >= attempts:
                    break
                t.state = TargetState.PENDING
                await self.save()
                await asyncio.sleep(copier.backoff(t.attempts))
                continue
            t.state, t.digest, t.verified_by = TargetState.VERIFIED, job.sha256, verified_by
            t.finished_at = self.wall()
            await self.inventory.record_copy(t.region, job.name, job.sha256, job.read_at or 0.0)
            await self.save()
            return
        t.state, t.finished_at = TargetState.FAILED, self.wall()
        await self.save()

    def _region(self, region_id: str, role: str) -> RegionView:
        region = self.registry.snapshot().by_id.get(region_id)
        if region is None:
            raise JobFailed(f"the {role} region {region_id!r} no longer exists")
        return region
