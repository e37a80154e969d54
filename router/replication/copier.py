"""The network legs of one replication job: read the source, copy to a target, prove the copy.

``Copier`` is made per job run with the live ``replication`` settings; it raises
``JobFailed`` for what ends the whole job (the source is missing, changed while it was read,
or the spool cannot be written) and ``TransferError`` for what one more try may fix.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TypeVar

import aiohttp

from router.config.loader import ReplicationConfig
from router.errors import RouterError
from router.replication.jobs import Job
from router.replication.transfer import (
    Progress,
    Report,
    SourceRead,
    SpoolError,
    SpoolWriter,
    TransferError,
    hash_url,
    head,
    put_file,
    read_to_spool,
    report_from,
)
from router.state.snapshot import RegionView

log = logging.getLogger("router.replication.engine")

T = TypeVar("T")
BACKOFF_MAX_S = 60.0
SslFor = Callable[[RegionView], ssl.SSLContext | bool]


class JobFailed(RouterError):
    """Ends a whole job as failed (source missing or changed, spool unwritable)."""


class Copier:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: ReplicationConfig,
        spool_dir: Path,
        *,
        headers: Mapping[str, str],
        ssl_for: SslFor,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.config = config
        self.spool_dir = spool_dir
        self.headers = headers
        self.ssl_for = ssl_for
        self.wall = wall

    def __repr__(self) -> str:
        c = self.config
        return f"<Copier attempts={c.attempts} verify={c.verify} spool={self.spool_dir}>"

    def backoff(self, attempt: int) -> float:
        """Exponential from ``backoff_base`` (capped at a minute), +-20% jitter."""
        base = self.config.backoff_base_s * 2.0 ** (attempt - 1)
        return min(BACKOFF_MAX_S, base) * random.uniform(0.8, 1.2)

    async def read_source(self, job: Job, source: RegionView) -> SourceRead:
        """Read ``source+path`` into ``<job>.part`` with retries; JobFailed when it cannot."""
        return await self._retry(lambda: self._read_source(job, source), f"reading {job.path}")

    async def put(self, job: Job, region: RegionView, spool: Path, progress: Progress) -> Report:
        assert job.sha256 is not None and job.size_bytes is not None
        return await put_file(
            self.session,
            region.endpoint.url + job.path,
            spool,
            job.size_bytes,
            job.sha256,
            progress,
            headers=self.headers,
            ssl=self.ssl_for(region),
        )

    async def verify(self, job: Job, region: RegionView, report: Report) -> str:
        """How the copy was proven (see docs/replication.md); a mismatch raises TransferError."""
        want, size = job.sha256, job.size_bytes
        url = region.endpoint.url + job.path
        verdict = _judge(report, want, size, region.id)
        if verdict is not None:
            return verdict
        # The PUT answer proved nothing: ask about the stored copy.
        status, headers = await head(
            self.session, url, headers=self.headers, ssl=self.ssl_for(region)
        )
        stored = report_from(headers, head=True) if 200 <= status < 300 else Report()
        verdict = _judge(stored, want, size, region.id)
        if verdict is not None:
            return verdict
        if self.config.verify:
            got, got_size = await hash_url(
                self.session, url, headers=self.headers, ssl=self.ssl_for(region)
            )
            if got != want:
                raise TransferError(
                    f"read-back of the copy on {region.id} hashes to {got} ({got_size} bytes), "
                    f"expected {want}"
                )
            return "read-back"
        return "size" if size in (report.size, stored.size) else "status"

    async def _read_source(self, job: Job, source: RegionView) -> SourceRead:
        url = source.endpoint.url + job.path
        part = SpoolWriter(self.spool_dir / f"{job.id}.part")
        job.fetched_bytes = 0

        def progress(n: int) -> None:
            job.fetched_bytes += n

        def room(length: int | None) -> None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.spool_dir).free
            if length is not None and length > free:
                raise JobFailed(f"not enough space for the spool: {length} bytes, {free} free")

        ssl_ctx = self.ssl_for(source)
        started = self.wall()
        try:
            read = await read_to_spool(
                self.session,
                url,
                part,
                progress,
                headers=self.headers,
                ssl=ssl_ctx,
                before_body=room,
            )
            await self._check_unchanged(url, read, ssl_ctx, started)
        except SpoolError as exc:
            part.abort()
            raise JobFailed(str(exc)) from None
        except BaseException:
            part.abort()
            raise
        return read

    async def _check_unchanged(
        self, url: str, read: SourceRead, ssl_ctx: ssl.SSLContext | bool, started: float
    ) -> None:
        """Fail the job when the source changed while it was read: never spread a torn copy.

        A digest the source declared must match. Then a HEAD must show the same validators
        (ETag, Last-Modified, Content-Length) as the GET. Validators prove nothing when
        there are none, or when Last-Modified is within a second of the read (the file may
        have changed again within the same second, as with nginx's second-granular ETag):
        then, with ``verify`` on, the source is hashed once more and must match.
        """
        if read.declared is not None and read.declared != read.sha256:
            raise JobFailed(
                f"the source changed while it was read: it declares sha256 {read.declared} "
                f"but the bytes received hash to {read.sha256}"
            )
        status, headers = await head(self.session, url, headers=self.headers, ssl=ssl_ctx)
        if 200 <= status < 300:
            for name, before in read.validators.items():
                after = headers.get(name)
                if after is not None and after != before:
                    raise JobFailed(
                        f"the source changed while it was read ({name} {before!r} -> {after!r})"
                    )
        strong = read.declared is not None or (
            any(k in read.validators for k in ("ETag", "Last-Modified"))
            and not _racy(read.validators.get("Last-Modified"), started)
        )
        if not strong and self.config.verify:
            # Nothing identifies the version we read: hash it once more and compare.
            again, _ = await hash_url(self.session, url, headers=self.headers, ssl=ssl_ctx)
            if again != read.sha256:
                raise JobFailed(
                    f"the source changed while it was read: read twice, it hashed to "
                    f"{read.sha256} then {again}"
                )

    async def _retry(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        attempts = self.config.attempts
        for attempt in range(1, attempts + 1):
            try:
                return await fn()
            except TransferError as exc:
                if not exc.retryable or attempt >= attempts:
                    tries = f" after {attempt} tries" if attempt > 1 else ""
                    raise JobFailed(f"{what} from the source failed{tries}: {exc}") from None
                log.warning("replication: %s, try %d: %s", what, attempt, exc)
                await asyncio.sleep(self.backoff(attempt))
        raise AssertionError("unreachable")


def _judge(report: Report, want: str | None, size: int | None, region_id: str) -> str | None:
    """How ``report`` proves the copy ("target-digest", "etag"), or None if it proves nothing.

    A reported digest or size that differs raises: the copy is wrong, try again.
    """
    if report.sha256 is not None:
        if report.sha256 != want:
            raise TransferError(f"{region_id} reports sha256 {report.sha256}, expected {want}")
        return "target-digest"
    if report.etag is not None and report.etag == want:
        return "etag"
    if report.size is not None and report.size != size:
        raise TransferError(f"{region_id} holds {report.size} bytes, expected {size}")
    return None


def _racy(last_modified: str | None, read_started: float) -> bool:
    """True when Last-Modified is too close to the read to rule out a same-second change."""
    if last_modified is None:
        return False
    try:
        modified = parsedate_to_datetime(last_modified).timestamp()
    except (TypeError, ValueError, IndexError):
        return True  # unreadable: assume the worst
    return modified >= read_started - 1.0
