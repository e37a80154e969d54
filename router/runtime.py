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

import prometheus_client
from prometheus_client import CollectorRegistry, Counter

from router.accesslog import AccessLogger
from router.config import Config
from router.health import HealthChecker, HttpProber, ProbeFn, ProbeResult
from router.metrics import GaugeCollector, TrafficCollector, TrafficStats
from router.outlier import OutlierDetector
from router.proxy import ProxyCore
from router.registry import Registry, Transition
from router.snapshot import RegionState, Snapshot, SnapshotHolder

log = logging.getLogger("router")

# `_created` series double every counter for no use to a router operator.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream


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
        self.outliers = OutlierDetector(self.registry, self.record_transition)
        self.access_logger = AccessLogger() if config.access_log else None
        self.core = ProxyCore(
            self.holder,
            loop=loop,
            observer=self.outliers.record,
            access_log=self.access_logger,
        )
        self.health = HealthChecker(
            self.registry,
            probe or HttpProber(self.instance_id),
            on_transition=self.record_transition,
            on_result=self._count_probe,
        )
        self.metrics.register(TrafficCollector(self.traffic_sources))
        self.metrics.register(
            GaugeCollector(
                "router_region_up",
                "1 when the region takes new traffic",
                ["region"],
                lambda: [([r.id], 1.0 if r.eligible else 0.0) for r in self.holder.current.regions],
            )
        )
        self.metrics.register(
            GaugeCollector(
                "router_region_state",
                "1 for the region's current state",
                ["region", "state"],
                lambda: [
                    ([r.id, s.value], 1.0 if r.state is s else 0.0)
                    for r in self.holder.current.regions
                    for s in RegionState
                ],
            )
        )
        self.metrics.register(
            GaugeCollector(
                "router_region_latency_seconds",
                "Latency estimate (peak EWMA)",
                ["region"],
                lambda: [
                    (
                        [r.id],
                        self.core.loads.get(r.id).latency_estimate(
                            r.probe_latency_s, time.monotonic()
                        ),
                    )
                    for r in self.holder.current.regions
                ],
            )
        )
        self.metrics.register(
            GaugeCollector(
                "router_region_inflight",
                "Requests in flight",
                ["region"],
                lambda: [
                    ([r.id], float(self.core.loads.get(r.id).inflight))
                    for r in self.holder.current.regions
                ],
            )
        )
        self.metrics.register(
            GaugeCollector(
                "router_panic",
                "1 while the default route fails open",
                [],
                lambda: [([], 1.0 if self.holder.current.panic else 0.0)],
            )
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.transition_hooks: list[Callable[[Transition], None]] = []

    # -- wiring ------------------------------------------------------------------------

    def _publish(self, snapshot: Snapshot) -> None:
        self.holder.current = snapshot
        core = getattr(self, "core", None)  # None while __init__ subscribes
        if core is not None and core.config is not snapshot.config:
            core.apply_config(snapshot.config)

    def traffic_sources(self) -> Iterable[TrafficStats]:
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
        if t.to_state in (RegionState.UNHEALTHY, RegionState.EJECTED, RegionState.FAILED_OVER):
            reason = t.to_state.value
            self.failovers.labels(t.region, reason).inc()

    def _count_probe(self, region_id: str, result: ProbeResult) -> None:
        self.health_checks.labels(region_id, "success" if result.ok else "failure").inc()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self.health.sync()
        self._tasks.append(self.loop.create_task(self._sweep_loop(), name="proxy-sweeper"))
        self._tasks.append(self.loop.create_task(self._tick_loop(), name="registry-tick"))

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.core.sweep()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for t in self.registry.tick(time.monotonic(), time.time()):
                self.record_transition(t)

    async def stop(self) -> None:
        await self.health.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if isinstance(self.health.probe, HttpProber):
            await self.health.probe.close()
        if self.access_logger is not None:
            self.access_logger.flush()

    def ready(self) -> bool:
        return any(r.eligible for r in self.holder.current.regions) or self.holder.current.panic
