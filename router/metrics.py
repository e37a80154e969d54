"""Traffic counters kept as plain numbers on the hot path, exposed to Prometheus on scrape.

Incrementing prometheus-client children costs microseconds per request; a dict increment
costs tens of nanoseconds. So the proxy counts into ``TrafficStats`` and a custom collector
turns the numbers into metric families when /metrics is scraped. With worker processes the
same numbers are shipped to the control process and summed (``merge``). The counting
half is ``router.traffic`` (compiled with the proxy path); its names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from router.traffic import DURATION_BUCKETS_S, TrafficStats

__all__ = [
    "DURATION_BUCKETS_S",
    "CounterCollector",
    "GaugeCollector",
    "TrafficCollector",
    "TrafficStats",
]


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
