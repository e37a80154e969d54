"""Worker processes for ``run --workers N``: spawn, feed snapshots, merge reports, restart.

The supervisor binds the proxy socket once and every worker inherits it. It is the single
owner of state (registry, health, outliers, admin); workers only serve. Each snapshot
change is pushed to every worker at once; each worker acknowledges the version it applied,
which gives the propagation time. Worker reports (counters, in-flight, passive outcomes)
feed metrics, the in-flight view and outlier detection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from router.errors import RouterError
from router.metrics import TrafficStats
from router.runtime import Runtime
from router.state.snapshot import Snapshot
from router.workers.channel import ACK, READY, REPORT, SNAPSHOT, ChannelProtocol

log = logging.getLogger("router.workers.supervisor")

START_TIMEOUT_S = 15.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.2, 10.0
STABLE_S = 30.0  # a worker alive this long resets its restart backoff


class WorkerStartError(RouterError):
    """A worker process did not start or did not report ready in time."""


def _reserve(host: str, port: int) -> socket.socket:
    """A bound, never listening SO_REUSEPORT socket: holds the port the workers share."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


@dataclass(slots=True)
class WorkerHandle:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: ChannelProtocol | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = 0.0
    restarts: int = 0
    stats: TrafficStats = field(default_factory=TrafficStats)
    inflight: dict[str, int] = field(default_factory=dict)
    acked_version: int = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class Supervisor:
    def __init__(self, runtime: Runtime, workers: int) -> None:
        self.runtime = runtime
        self.count = workers
        self.workers = [WorkerHandle(i) for i in range(workers)]
        self.sock: socket.socket | None = None
        self.https_sock: socket.socket | None = None
        self.host = ""
        self.retired = TrafficStats()  # counters of workers that exited
        self.stopping = False
        self.started = False  # start() returned: every worker was ready once
        self._monitors: list[asyncio.Task[None]] = []
        self._sent_at: dict[int, float] = {}
        self.propagation_s: deque[float] = deque(maxlen=1000)
        self._ack_event = asyncio.Event()
        self.restarts = Counter(
            "router_worker_restarts",
            "Worker processes restarted after exiting",
            registry=runtime.metrics,
        )
        self._latency_prev: dict[tuple[int, str], tuple[float, float]] = {}

    # -- start / stop ------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        # Each worker listens on its own SO_REUSEPORT socket, so the kernel spreads new
        # connections evenly (one shared accept queue lets the first worker to wake take
        # nearly all of them). This socket only reserves the port (and learns it for
        # port 0): it is bound but never listens, so it receives no connections.
        self.sock = _reserve(host, port)
        self.host = host
        https = self.runtime.holder.current.config.listen.https
        if https is not None:  # every worker serves TLS on it too
            try:
                self.https_sock = _reserve(https.host, https.port)
            except OSError:
                self.sock.close()
                raise
        self.runtime.snapshot_hooks.append(self.broadcast)
        for w in self.workers:
            await self._spawn(w)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(w.ready.wait() for w in self.workers)), START_TIMEOUT_S
            )
        except TimeoutError:
            await self.stop(0.5)
            raise WorkerStartError(
                f"workers did not become ready within {START_TIMEOUT_S:.0f}s"
            ) from None
        self.started = True

    @property
    def port(self) -> int:
        assert self.sock is not None
        return int(self.sock.getsockname()[1])

    @property
    def https_port(self) -> int | None:
        sock = self.https_sock
        return None if sock is None else int(sock.getsockname()[1])

    async def _spawn(self, w: WorkerHandle) -> None:
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        w.ready = asyncio.Event()
        w.acked_version = 0
        https = [] if self.https_port is None else ["--https-port", str(self.https_port)]
        w.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "router.workers.worker",
            "--listen",
            f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}",
            "--channel-fd",
            str(child.fileno()),
            "--id",
            str(w.index),
            "--workers",
            str(self.count),
            *https,
            pass_fds=(child.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
        )
        child.close()
        w.started_at = time.monotonic()
        _, w.channel = await loop.connect_accepted_socket(
            lambda: ChannelProtocol(
                lambda kind, payload: self._on_message(w, kind, payload), lambda: None
            ),
            sock=parent,
        )
        w.channel.send(SNAPSHOT, self._stamp(self.runtime.holder.current))
        self._monitors.append(loop.create_task(self._monitor(w), name=f"worker-{w.index}"))

    async def _monitor(self, w: WorkerHandle) -> None:
        assert w.process is not None
        proc = w.process
        code = await proc.wait()
        self.retired.merge(w.stats)
        w.stats = TrafficStats()
        w.inflight = {}
        self._refresh_inflight()
        if self.stopping:
            return
        alive = time.monotonic() - w.started_at
        if alive > STABLE_S:
            w.restarts = 0
        delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * (2**w.restarts))
        w.restarts += 1
        self.restarts.inc()
        log.warning(
            "worker %d (pid %s) exited with %s after %.1fs; restarting in %.1fs",
            w.index,
            proc.pid,
            code,
            alive,
            delay,
        )
        await asyncio.sleep(delay)
        if not self.stopping:
            await self._spawn(w)

    def signal_workers(self, sig: signal.Signals) -> None:
        """Pass ``sig`` on to every running worker (SIGUSR1: reopen the access log)."""
        for w in self.workers:
            if w.process is not None and w.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.process.send_signal(sig)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM every worker (each drains up to the grace period), then wait for them."""
        self.stopping = True
        procs = [w.process for w in self.workers if w.process is not None]
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = grace_s + 5.0
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), deadline)
        except TimeoutError:
            for p in procs:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            await asyncio.gather(*(p.wait() for p in procs))
        for t in self._monitors:
            t.cancel()
        await asyncio.gather(*self._monitors, return_exceptions=True)
        for sock in (self.sock, self.https_sock):
            if sock is not None:
                sock.close()

    # -- channel -----------------------------------------------------------------------

    def _stamp(self, snapshot: Snapshot) -> Snapshot:
        self._sent_at.setdefault(snapshot.version, time.monotonic())
        if len(self._sent_at) > 256:
            for v in sorted(self._sent_at)[:-128]:
                del self._sent_at[v]
        return snapshot

    def broadcast(self, snapshot: Snapshot) -> None:
        self._stamp(snapshot)
        for w in self.workers:
            if w.channel is not None and not w.channel.closed:
                w.channel.send(SNAPSHOT, snapshot)

    async def wait_applied(self, version: int, timeout_s: float = 1.0) -> bool:
        """Wait until every live worker has applied snapshot ``version`` (False on timeout)."""
        deadline = time.monotonic() + timeout_s
        while not self._applied_everywhere(version):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("snapshot v%d not acknowledged by every worker in time", version)
                return False
            self._ack_event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ack_event.wait(), remaining)
        return True

    def _applied_everywhere(self, version: int) -> bool:
        return all(
            w.acked_version >= version
            for w in self.workers
            if w.ready.is_set() and w.process is not None and w.process.returncode is None
        )

    def _on_message(self, w: WorkerHandle, kind: bytes, payload: Any) -> None:
        if kind == READY:
            w.ready.set()
            log.info("worker %d ready (pid %s)", w.index, w.pid)
        elif kind == ACK:
            version = int(payload)
            w.acked_version = max(w.acked_version, version)
            self._ack_event.set()
            sent = self._sent_at.get(version)
            if sent is not None and w.ready.is_set():
                self.propagation_s.append(time.monotonic() - sent)
        elif kind == REPORT:
            self._on_report(w, payload)

    def _on_report(self, w: WorkerHandle, report: dict[str, Any]) -> None:
        stats: TrafficStats = report["stats"]
        now = time.monotonic()
        loads = self.runtime.loads
        # Mean latency per region over the report interval feeds the shared estimate.
        for region, hist in stats.durations.items():
            count, total = sum(hist[:-1]), hist[-1]
            prev = self._latency_prev.get((w.index, region), (0.0, 0.0))
            dc, dt = count - prev[0], total - prev[1]
            self._latency_prev[(w.index, region)] = (count, total)
            if dc > 0:
                loads.get(region).observe(dt / dc, now)
        w.stats = stats
        w.inflight = report["inflight"]
        self._refresh_inflight()
        outliers = self.runtime.outliers
        limit = self.runtime.registry.config.outlier_detection.consecutive_failures
        for region, runs in report["outcomes"].items():
            for ok, count, kind in runs:
                for _ in range(1 if ok else min(count, limit)):
                    outliers.record(region, ok, kind)

    def _refresh_inflight(self) -> None:
        totals: dict[str, int] = {}
        for w in self.workers:
            for rid, n in w.inflight.items():
                totals[rid] = totals.get(rid, 0) + n
        loads = self.runtime.loads
        for rid, load in loads.items():
            load.inflight = totals.get(rid, 0)
        for rid, n in totals.items():
            loads.get(rid).inflight = n

    # -- views -------------------------------------------------------------------------

    def traffic_sources(self) -> list[TrafficStats]:
        return [self.retired, *(w.stats for w in self.workers)]

    def ready(self) -> bool:
        """Started (every worker came up once) and at least one worker serving now."""
        return self.started and any(
            w.ready.is_set() and w.process and w.process.returncode is None for w in self.workers
        )

    def status(self) -> dict[str, Any]:
        prop = sorted(self.propagation_s)

        def pct(q: float) -> float | None:
            return round(prop[min(len(prop) - 1, int(q * len(prop)))] * 1000, 3) if prop else None

        return {
            "workers": [
                {
                    "index": w.index,
                    "pid": w.pid,
                    "ready": w.ready.is_set(),
                    "restarts": w.restarts,
                    "acked_snapshot": w.acked_version,
                    "requests": w.stats.total_requests(),
                }
                for w in self.workers
            ],
            "snapshot_propagation_ms": {"p50": pct(0.5), "p99": pct(0.99), "samples": len(prop)},
        }


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
