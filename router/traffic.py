"""Traffic counters kept as plain numbers on the hot path (the counting half of metrics).

Every proxied request is counted here, so this module is compiled with the proxy path
(setup.py): interpreted, ``TrafficStats.record`` was one of the last Python frames on every
request. Rendering for Prometheus is ``router.metrics``, at scrape time; with worker
processes the same objects are pickled to the control process and summed (``merge``).
"""

from __future__ import annotations

from bisect import bisect_left

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
