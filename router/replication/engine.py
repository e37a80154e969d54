"""Replication jobs: read an artifact from one region once, copy it to others, verify each copy.

``ReplicationEngine`` owns the jobs (store kind ``replications``). ``submit`` validates a
request and starts a task per job: the task reads ``GET source+path`` into a spool file in
``state_dir/spool`` (sha256 computed on the way), PUTs it to the targets
(``replication.concurrency`` at a time, ``replication.attempts`` tries each with exponential
backoff from ``replication.backoff_base``), verifies each copy and records it in the
artifact inventory, which routing reads. Unfinished jobs resume after a restart without
re-copying verified targets. Control-plane code kept in ``router/`` so a supervisor
process can run it without the admin app; the rules are in docs/replication.md.

With several instances (``state.backend: redis``) a ``coordinator``
(router/cluster/leases.py) decides which instance runs each job: the one holding its
lease. The others keep the job's JSON up to date from the store (``apply_remote``) and
take the job over (``adopt``) when the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from router import __version__
from router.config.loader import ReplicationConfig
from router.config.validate import FieldError, ValidationError
from router.errors import NotFound, RegionConflict
from router.replication.copier import Copier, JobFailed
from router.replication.inventory import ArtifactInventory
from router.replication.jobs import KINDS, Job, JobRequest, JobState, TargetState
from router.replication.planning import check_overlap, plan_job
from router.replication.runner import JobRunner
from router.replication.transfer import TransferError, head
from router.state.registry import Registry
from router.state.snapshot import RegionView
from router.store.docs import split_key
from router.store.files import StateStore

log = logging.getLogger("router.replication.engine")

KEEP_FINISHED = 200  # finished jobs kept in the store and the API
RESULTS = ("succeeded", "failed", "cancelled")


class JobCoordinator(Protocol):
    """Who runs which job, when several instances share the jobs."""

    async def acquire(self, job_id: str) -> bool: ...

    async def release(self, job_id: str) -> None: ...


class ReplicationEngine:
    def __init__(
        self,
        registry: Registry,
        store: StateStore,
        inventory: ArtifactInventory,
        metrics: CollectorRegistry,
        *,
        instance_id: str = "router",
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.store = store
        self.inventory = inventory
        self.wall = wall
        self.jobs: dict[str, Job] = {}  # in creation order
        self.instance_id = instance_id
        self.coordinator: JobCoordinator | None = None  # several instances: leases
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ssl: dict[str, ssl.SSLContext] = {}
        self._headers = {
            "User-Agent": f"region-router/{__version__}",
            "X-Router-Instance": instance_id,
        }
        self.jobs_total = Counter(
            "router_replication_jobs",
            "Replication jobs finished, by kind and result",
            ["kind", "result"],
            registry=metrics,
        )
        for kind in KINDS:  # every series exists from the start, at 0
            for result in RESULTS:
                self.jobs_total.labels(kind, result)

    def __repr__(self) -> str:
        active = sum(1 for j in self.jobs.values() if j.active)
        return (
            f"<ReplicationEngine jobs={len(self.jobs)} active={active} running={len(self._tasks)}>"
        )

    @property
    def config(self) -> ReplicationConfig:
        return self.registry.config.replication

    @property
    def spool_dir(self) -> Path:
        return self.store.state_dir / "spool"

    # -- lifecycle ---------------------------------------------------------------------

    def restore(self) -> None:
        """Load jobs; unfinished ones resume on ``start`` (interrupted tries don't count)."""
        data = self.store.load("replications") or {}
        for item in data.get("jobs", []) if isinstance(data, dict) else []:
            try:
                job = Job.from_json(item)
            except (KeyError, ValueError, TypeError) as exc:
                log.error("skipping an unreadable replication job in the store: %r", exc)
                continue
            if job.active and self.coordinator is None:
                job.reset_interrupted()  # shared jobs: whoever takes the lease does this
            self.jobs[job.id] = job
        keep = {f"{j.id}.spool" for j in self.jobs.values() if j.active}
        if self.spool_dir.is_dir():
            for path in self.spool_dir.iterdir():
                if path.name not in keep:
                    with contextlib.suppress(OSError):
                        path.unlink()

    async def start(self) -> None:
        timeouts = self.registry.config.timeouts
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            read_bufsize=256 * 1024,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=timeouts.connect_s, sock_read=max(30.0, timeouts.idle_s)
            ),
        )
        if self.coordinator is None:  # else the coordinator adopts the jobs it can lease
            for job in self.jobs.values():
                if job.active:
                    self._schedule(job)

    async def stop(self) -> None:
        """Stop every job where it stands; unfinished ones resume at the next start."""
        running = list(self._tasks)
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._save()
        if self.coordinator is not None:
            for job_id in running:  # another instance may take them over at once
                await self.coordinator.release(job_id)

    # -- several instances -------------------------------------------------------------

    def running(self, job_id: str) -> bool:
        return job_id in self._tasks

    def adopt(self, job: Job) -> None:
        """Run a job whose lease this instance just took (its previous runner stopped)."""
        if job.id in self._tasks or not job.active or self._session is None:
            return
        job.reset_interrupted()
        log.info("replication %s: taking over (was run by %s)", job.id, job.runner)
        self._schedule(job)

    def abandon(self, job_id: str) -> None:
        """Stop running a job without ending it: another instance holds its lease now."""
        task = self._tasks.pop(job_id, None)
        if task is not None:
            task.cancel()

    def apply_remote(self, entries: Mapping[str, object], deleted: list[str]) -> None:
        """Jobs as another instance wrote them; a job running here keeps its own progress."""
        for key, value in entries.items():
            prefix, job_id = split_key(key)
            if prefix != "job" or not isinstance(value, dict):
                continue
            try:
                job = Job.from_json(value)
            except (KeyError, ValueError, TypeError) as exc:
                log.error("replication: unreadable job %s from the store: %r", job_id, exc)
                continue
            if job_id in self._tasks:
                if job.active:
                    continue  # our run is the truth; theirs is an older write
                self.abandon(job_id)  # cancelled (or ended) elsewhere
            self.jobs[job_id] = job
        for key in deleted:
            prefix, job_id = split_key(key)
            if prefix == "job" and job_id not in self._tasks:
                self.jobs.pop(job_id, None)

    # -- operations --------------------------------------------------------------------

    def plan(self, request: JobRequest) -> Job:
        """A new job for ``request``; raises ValidationError (400) or RegionConflict (409)."""
        return plan_job(self.registry.snapshot(), request, self.jobs.values(), self.wall())

    async def submit(self, request: JobRequest, *, check_source: bool = True) -> Job:
        """Validate, check the source has the path (HEAD), persist and start the job."""
        job = self.plan(request)
        if check_source and self._session is not None:
            await self._check_source(job)
            check_overlap(self.jobs.values(), job.path, job.source, [t.region for t in job.targets])
        self.jobs[job.id] = job
        try:
            await self._save(strict=True)
        except Exception:
            del self.jobs[job.id]  # not on disk: not accepted
            raise
        self._trim()
        log.info(
            "replication %s: %s %s %s from %s to %s",
            job.id,
            job.kind,
            job.name,
            job.path,
            job.source,
            ", ".join(t.region for t in job.targets),
        )
        if self._session is not None and (
            self.coordinator is None or await self.coordinator.acquire(job.id)
        ):
            self._schedule(job)
        return job

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no replication job with id {job_id!r}")
        return job

    def recent(self) -> list[Job]:
        """Every kept job, newest first."""
        return list(reversed(self.jobs.values()))

    async def cancel(self, job_id: str) -> Job:
        """Stop a job: its tasks are cancelled and awaited, its spool removed."""
        job = self.get(job_id)
        if job.state is JobState.CANCELLED:
            return job
        if not job.active:
            raise RegionConflict(f"job {job_id} already ended ({job.state.value})")
        task = self._tasks.get(job_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if job.active:  # the task may have finished on its own meanwhile
            await self._finish(job, JobState.CANCELLED, "cancelled by request")
        return job

    # -- checks ------------------------------------------------------------------------

    async def _check_source(self, job: Job) -> None:
        """A HEAD first, so a missing source path is a 400 now rather than a failed job."""
        region = self.registry.snapshot().by_id[job.source]
        url = region.endpoint.url + job.path
        try:
            status, _ = await asyncio.wait_for(
                head(self._client(), url, headers=self._headers, ssl=self._ssl_for(region)),
                timeout=max(5.0, 2 * self.registry.config.timeouts.connect_s),
            )
        except (TransferError, TimeoutError) as exc:
            log.warning("replication: cannot check the source (%s); trying anyway", exc)
            return
        if status in (404, 410):
            raise ValidationError(
                [FieldError("path", f"source {job.source} has nothing at {job.path} ({status})")]
            )

    # -- the job task ------------------------------------------------------------------

    def _schedule(self, job: Job) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job), name=f"replication-{job.id}")
        self._tasks[job.id] = task

        def done(_: object) -> None:
            if self._tasks.get(job.id) is task:  # not a later run of the same job
                del self._tasks[job.id]

        task.add_done_callback(done)

    async def _run(self, job: Job) -> None:
        try:
            job.runner = self.instance_id
            if job.state is JobState.PENDING:
                job.state = JobState.RUNNING
                job.started_at = self.wall()
            await self._save()
            copier = Copier(
                self._client(),
                self.config,
                self.spool_dir,
                headers=self._headers,
                ssl_for=self._ssl_for,
                wall=self.wall,
            )
            runner = JobRunner(
                job,
                copier,
                registry=self.registry,
                inventory=self.inventory,
                spool_dir=self.spool_dir,
                save=self._save,
                wall=self.wall,
            )
            state, error = await runner.run()
        except JobFailed as exc:
            state, error = JobState.FAILED, str(exc)
        # CancelledError passes: stop() keeps the job for the next start; cancel() ends it.
        except Exception as exc:  # a bug must not leave the job running forever
            log.exception("replication %s: internal error", job.id)
            state, error = JobState.FAILED, f"internal error: {exc!r}"
        await self._finish(job, state, error)

    async def _finish(self, job: Job, state: JobState, error: str | None) -> None:
        now = self.wall()
        job.state, job.error, job.finished_at = state, error, now
        for t in job.targets:
            if not t.done:
                t.state, t.finished_at = TargetState.FAILED, now
                t.last_error = "job cancelled" if state is JobState.CANCELLED else error
        self._remove_spool(job)
        self.jobs_total.labels(job.kind, state.value).inc()
        await self._save()
        if self.coordinator is not None:
            await self.coordinator.release(job.id)
        (log.info if state is JobState.SUCCEEDED else log.warning)(
            "replication %s %s%s", job.id, state.value, f": {error}" if error else ""
        )

    # -- helpers -----------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the replication engine is not started")
        return self._session

    def _ssl_for(self, region: RegionView) -> ssl.SSLContext | bool:
        if region.endpoint.scheme != "https" or region.ca_file is None:
            return True
        ctx = self._ssl.get(region.ca_file)
        if ctx is None:
            ctx = ssl.create_default_context(cafile=region.ca_file)
            self._ssl[region.ca_file] = ctx
        return ctx

    def _remove_spool(self, job: Job) -> None:
        for suffix in (".spool", ".part"):
            with contextlib.suppress(OSError):
                (self.spool_dir / f"{job.id}{suffix}").unlink()

    def _trim(self) -> None:
        finished = [j.id for j in self.jobs.values() if not j.active]
        for job_id in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.jobs[job_id]

    async def _save(self, *, strict: bool = False) -> None:
        """Persist every job; a failed write stops nothing that runs (unless ``strict``)."""
        try:
            await self.store.write(
                "replications", {"jobs": [j.to_json() for j in self.jobs.values()]}
            )
        except Exception as exc:  # the store's write error (or OSError): logged, retried next save
            if strict:
                raise
            log.error("replication jobs not saved: %s", exc)
