"""The per-request counters (router/traffic.py, compiled with the proxy path): counting,
merging, and the pickle round trip that carries a worker's counters to the control process."""

from __future__ import annotations

import pickle

from router.metrics import TrafficStats as ReExported
from router.traffic import DURATION_BUCKETS_S, TrafficStats


def test_record_counts_requests_and_buckets_durations() -> None:
    stats = TrafficStats()
    stats.record("r1", "GET", "200", 0.0004)
    stats.record("r1", "GET", "200", 0.0005)  # on a bucket's bound: that bucket
    stats.record("r1", "GET", "502", 100.0)  # past the last bound: +Inf
    assert stats.requests == {("r1", "GET", "200"): 2, ("r1", "GET", "502"): 1}
    hist = stats.durations["r1"]
    assert len(hist) == len(DURATION_BUCKETS_S) + 2
    assert hist[0] == 2 and hist[len(DURATION_BUCKETS_S)] == 1
    assert hist[-1] == 0.0004 + 0.0005 + 100.0
    assert stats.total_requests() == 3


def test_pickled_counters_merge_like_the_originals() -> None:
    worker = TrafficStats()
    worker.record("r1", "POST", "201", 0.002)
    worker.upstream_error("r1", "reset")
    worker.retry("reset")
    worker.hedge("won")
    worker.access_log_dropped = 4
    shipped = pickle.loads(pickle.dumps(worker))
    total = TrafficStats()
    total.merge(shipped)
    total.merge(worker)
    assert total.requests == {("r1", "POST", "201"): 2}
    assert total.durations["r1"] == [2 * x for x in worker.durations["r1"]]
    assert total.upstream_errors == {("r1", "reset"): 2}
    assert total.retries == {"reset": 2} and total.hedges == {"won": 2}
    assert total.access_log_dropped == 8


def test_metrics_still_exports_the_counters() -> None:
    assert ReExported is TrafficStats
