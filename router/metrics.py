"""Traffic counters kept as plain numbers on the hot path, exposed to Prometheus on scrape.

Incrementing prometheus-client children costs microseconds per request; a dict increment
costs tens of nanoseconds. So the proxy counts into ``TrafficStats`` and a custom collector
turns the numbers into metric families when /metrics is scraped. With worker processes the
same numbers are shipped to the control process and summed (``merge``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Proxy latencies: sub-millisecond to tens of seconds.
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class TrafficStats:
    """Counters of one process. Keys are small tuples of label values."""

    __slots__ = (
        "access_log_dropped",
        "durations",
        "hedges",
        "requests",
        "retries",
        "upstream_errors",
    )

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}  # (region, method, code)
        # region -> [bucket counts..., +Inf count, sum]
        self.durations: dict[str, list[float]] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}  # (region, kind)
        self.retries: dict[str, int] = {}  # reason
        self.hedges: dict[str, int] = {}  # outcome: won | lost | cancelled | skipped_budget
        self.access_log_dropped = 0  # lines the access log could not write in time

    def record(self, region: str, method: str, code: str, duration_s: float) -> None:
        key = (region, method, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.durations.get(region)
        if hist is None:
            hist = self.durations[region] = [0.0] * (len(DURATION_BUCKETS_S) + 2)
        hist[bisect_left(DURATION_BUCKETS_S, duration_s)] += 1
        hist[-1] += duration_s

    def upstream_error(self, region: str, kind: str) -> None:
        key = (region, kind)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def retry(self, reason: str) -> None:
        self.retries[reason] = self.retries.get(reason, 0) + 1

    def hedge(self, outcome: str) -> None:
        self.hedges[outcome] = self.hedges.get(outcome, 0) + 1

    def merge(self, other: TrafficStats) -> None:
        for k, v in other.requests.items():
            self.requests[k] = self.requests.get(k, 0) + v
        for region, hist in other.durations.items():
            mine = self.durations.setdefault(region, [0.0] * len(hist))
            for i, x in enumerate(hist):
                mine[i] += x
        for k2, v in other.upstream_errors.items():
            self.upstream_errors[k2] = self.upstream_errors.get(k2, 0) + v
        for k3, v in other.retries.items():
            self.retries[k3] = self.retries.get(k3, 0) + v
        for k4, v in other.hedges.items():
            self.hedges[k4] = self.hedges.get(k4, 0) + v
        self.access_log_dropped += other.access_log_dropped

    def total_requests(self) -> int:
        return sum(self.requests.values())


class TrafficCollector(Collector):
    """Renders the summed TrafficStats of every process that serves traffic."""

    def __init__(self, sources: Callable[[], Iterable[TrafficStats]]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        total = TrafficStats()
        for s in self._sources():
            total.merge(s)
        requests = CounterMetricFamily(
            "router_requests",
            "Requests answered, by region, method and status code",
            labels=["region", "method", "code"],
        )
        for (region, method, code), n in sorted(total.requests.items()):
            requests.add_metric([region, method, code], n)
        yield requests
        hist = HistogramMetricFamily(
            "router_request_duration_seconds",
            "Time from request head to response head, by region",
            labels=["region"],
        )
        for region, counts in sorted(total.durations.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(DURATION_BUCKETS_S, counts, strict=False):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            cumulative += counts[len(DURATION_BUCKETS_S)]
            buckets.append(("+Inf", cumulative))
            hist.add_metric([region], buckets, sum_value=counts[-1])
        yield hist
        errors = CounterMetricFamily(
            "router_upstream_errors",
            "Failed upstream attempts, by region and kind",
            labels=["region", "kind"],
        )
        for (region, kind), n in sorted(total.upstream_errors.items()):
            errors.add_metric([region, kind], n)
        yield errors
        retries = CounterMetricFamily(
            "router_retries", "Retries made or skipped, by reason", labels=["reason"]
        )
        for reason, n in sorted(total.retries.items()):
            retries.add_metric([reason], n)
        yield retries
        hedges = CounterMetricFamily(
            "router_hedges",
            "Hedged copies of requests, by outcome (won, lost, cancelled, skipped_budget)",
            labels=["outcome"],
        )
        for outcome, n in sorted(total.hedges.items()):
            hedges.add_metric([outcome], n)
        yield hedges
        yield CounterMetricFamily(
            "router_access_log_dropped",
            "Access log lines dropped because the log sink was too slow, full or blocked",
            value=total.access_log_dropped,
        )


class _CallbackCollector(Collector):
    """A metric family computed at scrape time from a callback returning (labels, value)."""

    family: ClassVar[type[GaugeMetricFamily] | type[CounterMetricFamily]]

    def __init__(
        self,
        name: str,
        doc: str,
        labels: list[str],
        values: Callable[[], Iterable[tuple[list[str], float]]],
    ) -> None:
        self._name, self._doc, self._labels, self._values = name, doc, labels, values

    def collect(self) -> Iterator[Metric]:
        metric = self.family(self._name, self._doc, labels=self._labels)
        for labels, value in self._values():
            metric.add_metric(labels, value)
        yield metric


class GaugeCollector(_CallbackCollector):
    """Gauges computed at scrape time from a callback returning (labels, value) pairs."""

    family = GaugeMetricFamily


class CounterCollector(_CallbackCollector):
    """Counters read at scrape time from a callback returning (labels, total) pairs."""

    family = CounterMetricFamily
