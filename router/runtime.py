"""The single-process runtime: registry, data plane core, health, outliers and metrics wired.

``Runtime`` is what the admin plane is handed: it owns the registry (the one writer of
region state) and forwards every snapshot to the proxy's holder. It imports nothing from
``admin``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, NamedTuple, Protocol

import prometheus_client
from prometheus_client import CollectorRegistry, Counter

from router.config.loader import Config, access_log_path
from router.health.checker import HealthChecker, HttpProber, ProbeFn, ProbeResult
from router.health.outlier import OutlierDetector
from router.metrics import CounterCollector, GaugeCollector, TrafficCollector, TrafficStats
from router.proxy.accesslog import AccessLogger
from router.proxy.core import ProxyCore
from router.routing.load import LoadTable
from router.state.registry import Registry, Transition
from router.state.snapshot import (
    ELIGIBLE_STATES,
    MANUAL_STATES,
    RegionState,
    RegionView,
    Snapshot,
    SnapshotHolder,
)

log = logging.getLogger("router")

# `_created` series double every counter for no use to a router operator.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream


class WorkerPool(Protocol):
    """Worker processes serving the traffic (``router.workers.supervisor.Supervisor``;
    that package sits above this module, so the runtime names only what it uses)."""

    def traffic_sources(self) -> list[TrafficStats]: ...

    def ready(self) -> bool: ...

    async def wait_applied(self, version: int) -> object: ...


class Runtime:
    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        *,
        probe: ProbeFn | None = None,
        instance_id: str = "",
    ) -> None:
        self.loop = loop
        self.started_wall = time.time()
        self.transition_hooks: list[Callable[[Transition], None]] = []
        self.snapshot_hooks: list[Callable[[Snapshot], None]] = []  # e.g. push to workers
        # The worker processes that serve traffic instead of this one (serve_through).
        self.workers: WorkerPool | None = None

        self.instance_id = instance_id or config.instance_id or "router"
        self.registry = Registry(config, now=time.monotonic())
        self.holder = SnapshotHolder(self.registry.snapshot())
        self.registry.subscribe(self._publish)
        self.metrics = CollectorRegistry(auto_describe=True)
        self.failovers = Counter(
            "router_failovers",
            "Region state transitions out of rotation, by reason class",
            ["region", "reason"],
            registry=self.metrics,
        )
        self.health_checks = Counter(
            "router_health_checks",
            "Active health probes by result",
            ["region", "result"],
            registry=self.metrics,
        )
        self.config_reloads = Counter(
            "router_config_reloads", "Config reloads by result", ["result"], registry=self.metrics
        )
        for result in ("success", "error"):
            self.config_reloads.labels(result)
        self.outliers = OutlierDetector(self.registry, self.record_transition)
        self.access_logger: AccessLogger | None = None  # opened by start()
        self._loads = LoadTable()
        self.core = ProxyCore(
            self.holder, loop=loop, loads=self._loads, observer=self.outliers.record
        )
        self.health = HealthChecker(
            self.registry,
            probe or HttpProber(self.instance_id, addresses=self.core.dns.rotation),
            on_transition=self.record_transition,
            on_result=self._count_probe,
        )
        self.metrics.register(TrafficCollector(self.traffic_sources))
        self._register_gauges()
        self._tasks: list[asyncio.Task[None]] = []

    def _register_gauges(self) -> None:
        """The region, DNS and panic series, read at scrape time (table ``_SCRAPED``)."""
        for collector, name, doc, labels, samples in _SCRAPED:
            self.metrics.register(collector(name, doc, labels, partial(samples, self)))

    @property
    def loads(self) -> LoadTable:
        """Per-region load (in flight, latency): what strategies, views and removal drains
        read. One process: the proxy core's own; with workers the supervisor folds their
        reports into it."""
        return self._loads

    # -- wiring ------------------------------------------------------------------------

    def _publish(self, snapshot: Snapshot) -> None:
        old = self.holder.current
        self.holder.current = snapshot
        for hook in self.snapshot_hooks:
            hook(snapshot)
        core = getattr(self, "core", None)  # None while __init__ subscribes
        if core is not None:
            if core.config is not snapshot.config:
                core.apply_config(snapshot.config)
            core.snapshot_changed(old, snapshot)  # rescue requests on regions that left

    def serve_through(self, workers: WorkerPool) -> None:
        """Worker processes serve the traffic (the composition root says so, once, before
        start): their counters are the traffic's, readiness needs them, and an admin change
        is propagated once every worker applied it."""
        self.workers = workers

    def traffic_sources(self) -> Iterable[TrafficStats]:
        """Where served traffic is counted: this process, or its workers."""
        if self.workers is not None:
            return self.workers.traffic_sources()
        return (self.core.stats,)

    def merged_stats(self) -> TrafficStats:
        total = TrafficStats()
        for s in self.traffic_sources():
            total.merge(s)
        return total

    def record_transition(self, t: Transition) -> None:
        for hook in self.transition_hooks:
            hook(t)
        log.info(
            "region %s: %s -> %s (%s)", t.region, t.from_state.value, t.to_state.value, t.reason
        )
        reason = failover_reason(t)
        if reason is not None:
            self.failovers.labels(t.region, reason).inc()
        if t.to_state is RegionState.RECOVERING:
            self.outliers.begin_ramp(t.region)  # guarded failback watches the ramp
        elif t.from_state is RegionState.RECOVERING:
            self.outliers.end_ramp(t.region)

    def _count_probe(self, region_id: str, result: ProbeResult) -> None:
        self.health_checks.labels(region_id, "success" if result.ok else "failure").inc()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        config = self.registry.config
        if config.access_log and self.access_logger is None:
            # Here, not in __init__: an unwritable log file is a start-up error (OSError).
            self.access_logger = AccessLogger(self.loop, access_log_path(config))
            self.access_logger.bind(self.core.stats)
            self.core.access_log = self.access_logger.record
        self.health.sync()
        self._tasks.append(self.loop.create_task(self.core.sweep_forever(), name="proxy-sweeper"))
        self._tasks.append(self.loop.create_task(self._tick_loop(), name="registry-tick"))

    async def _tick_loop(self) -> None:
        loads = self.loads
        panic = self.holder.current.panic
        while True:
            await asyncio.sleep(0.5)
            for t in self.registry.tick(time.monotonic(), time.time()):
                self.record_transition(t)
            self.outliers.guard(lambda region_id: loads.get(region_id).mean_s)
            if self.holder.current.panic != panic:
                panic = self.holder.current.panic
                if panic:
                    log.warning("panic: too few healthy regions; failing open to all regions")
                else:
                    log.warning("panic over: routing to healthy regions only")

    async def stop(self) -> None:
        await self.health.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if isinstance(self.health.probe, HttpProber):
            await self.health.probe.close()
        await self.core.dns.close()
        if self.access_logger is not None:
            self.core.access_log = None
            self.access_logger.close()
            self.access_logger = None

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen the access log file by name (after logrotate renamed it)."""
        if self.access_logger is not None:
            self.access_logger.reopen()

    async def propagated(self) -> None:
        """Return once the current snapshot serves everywhere (at once with no workers)."""
        if self.workers is not None:
            await self.workers.wait_applied(self.holder.current.version)

    def ready(self) -> bool:
        """At least one region can take traffic (eligible, or every region in panic)."""
        if self.workers is not None and not self.workers.ready():
            return False
        return any(r.eligible for r in self.holder.current.regions) or self.holder.current.panic


def failover_reason(t: Transition) -> str | None:
    """The ``reason`` label of router_failovers_total, or None when no failover happened.

    A failover is a region leaving rotation: from healthy/recovering to anything else.
    """
    if t.from_state not in ELIGIBLE_STATES or t.to_state in ELIGIBLE_STATES:
        return None
    if t.to_state is RegionState.UNHEALTHY:
        return "health_check"
    if t.to_state is RegionState.EJECTED:
        return "guarded_failback" if t.reason.startswith("guarded failback") else "outlier"
    if t.to_state in MANUAL_STATES:
        return "manual"
    return "other"


# -- series read at scrape time ---------------------------------------------------------------

Samples = list[tuple[list[str], float]]


class Scraped(NamedTuple):
    collector: type[GaugeCollector | CounterCollector]
    name: str
    doc: str
    labels: list[str]
    samples: Callable[[Runtime], Samples]


def _dns_views(
    rt: Runtime, value: Callable[[dict[str, Any]], float]
) -> list[tuple[RegionView, float]]:
    """(region, value of its endpoint name's DNS status) for regions with a name."""
    dns = rt.core.dns
    out = []
    for r in rt.holder.current.regions:
        status = dns.status(r.endpoint.host)
        if status is not None:
            out.append((r, value(status)))
    return out


def _region_up(rt: Runtime) -> Samples:
    return [([r.id], 1.0 if r.eligible else 0.0) for r in rt.holder.current.regions]


def _region_state(rt: Runtime) -> Samples:
    regions = rt.holder.current.regions
    return [([r.id, s.value], 1.0 if r.state is s else 0.0) for r in regions for s in RegionState]


def _region_latency(rt: Runtime) -> Samples:
    now = time.monotonic()
    return [
        ([r.id], rt.loads.get(r.id).latency_estimate(r.probe_latency_s, now))
        for r in rt.holder.current.regions
    ]


def _region_inflight(rt: Runtime) -> Samples:
    return [([r.id], float(rt.loads.get(r.id).inflight)) for r in rt.holder.current.regions]


def _dns_stale(rt: Runtime) -> Samples:
    return [([r.id], v) for r, v in _dns_views(rt, lambda st: float(st["stale"]))]


def _dns_addresses(rt: Runtime) -> Samples:
    return [([r.id], v) for r, v in _dns_views(rt, lambda st: float(len(st["addresses"])))]


def _dns_lookups(rt: Runtime) -> Samples:
    return [
        ([e.host, result], float(n))
        for e in list(rt.core.dns.entries.values())
        if e.task is not None
        for result, n in (("success", e.lookups_ok), ("error", e.lookups_failed))
    ]


def _panic(rt: Runtime) -> Samples:
    return [([], 1.0 if rt.holder.current.panic else 0.0)]


_SCRAPED: tuple[Scraped, ...] = (
    Scraped(
        GaugeCollector,
        "router_region_up",
        "1 when the region takes new traffic",
        ["region"],
        _region_up,
    ),
    Scraped(
        GaugeCollector,
        "router_region_state",
        "1 for the region's current state",
        ["region", "state"],
        _region_state,
    ),
    Scraped(
        GaugeCollector,
        "router_region_latency_seconds",
        "Latency estimate (peak EWMA)",
        ["region"],
        _region_latency,
    ),
    Scraped(
        GaugeCollector, "router_region_inflight", "Requests in flight", ["region"], _region_inflight
    ),
    Scraped(
        GaugeCollector,
        "router_dns_stale",
        "1 while a region's endpoint name serves its last good addresses (lookup failing)",
        ["region"],
        _dns_stale,
    ),
    Scraped(
        GaugeCollector,
        "router_dns_addresses",
        "Addresses in the current answer for a region's endpoint name",
        ["region"],
        _dns_addresses,
    ),
    Scraped(
        CounterCollector,
        "router_dns_lookups",
        "DNS lookups of endpoint names by result",
        ["host", "result"],
        _dns_lookups,
    ),
    Scraped(GaugeCollector, "router_panic", "1 while the default route fails open", [], _panic),
)
