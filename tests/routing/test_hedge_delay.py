"""The automatic hedge delay: a windowed p95 of a region's response times."""

from __future__ import annotations

import random

import pytest

from router.routing.load import (
    HEDGE_MIN_DELAY_S,
    QUANTILE_WINDOW_S,
    RegionLoad,
    WindowedQuantile,
    auto_hedge_delay,
)


def test_p95_is_within_the_bucket_resolution() -> None:
    rng = random.Random(7)
    samples = [rng.expovariate(1 / 0.02) for _ in range(5000)]
    q = WindowedQuantile()
    for s in samples:
        q.add(s, 1.0)
    true_p95 = sorted(samples)[int(0.95 * len(samples))]
    estimate = q.quantile(0.95, 1.0)
    assert estimate is not None
    assert true_p95 <= estimate <= true_p95 * 1.16  # buckets are 15% wide, upper bound


def test_too_few_samples_give_no_estimate_and_old_windows_age_out() -> None:
    q = WindowedQuantile()
    for _ in range(19):
        q.add(0.01, 1.0)
    assert q.quantile(0.95, 1.0) is None
    q.add(0.01, 1.0)
    assert q.quantile(0.95, 1.0) == pytest.approx(0.01, rel=0.16)
    # one window later the samples are still counted; two windows later they are gone
    assert q.quantile(0.95, 1.0 + QUANTILE_WINDOW_S + 0.1) is not None
    assert q.quantile(0.95, 1.0 + 3 * QUANTILE_WINDOW_S) is None


def test_the_estimate_follows_a_region_that_slows_down() -> None:
    q = WindowedQuantile()
    for i in range(200):
        q.add(0.005, i * 0.01)
    fast = q.quantile(0.95, 2.0)
    for i in range(200):
        q.add(0.2, 2.0 + QUANTILE_WINDOW_S + i * 0.01)  # a whole window later, slow
    slow = q.quantile(0.95, 4.0 + QUANTILE_WINDOW_S)
    assert fast is not None and slow is not None
    assert fast < 0.01
    assert slow > 0.15


def test_auto_delay_falls_back_to_the_latency_estimate_then_uses_the_p95() -> None:
    load = RegionLoad()
    delay, source = auto_hedge_delay(load, 0.004, now=1.0)  # no samples: 2 x probe RTT
    assert delay == pytest.approx(0.008) and "latency estimate" in source
    for _ in range(50):
        load.record_time(0.03, 1.0)
    load.p95_s = load.quantiles.quantile(0.95, 1.0) if load.quantiles else None
    delay, source = auto_hedge_delay(load, 0.004, now=1.0)
    assert delay == pytest.approx(0.03, rel=0.16) and "p95" in source
    load.p95_s = 0.0001
    assert auto_hedge_delay(load, None, now=1.0)[0] == HEDGE_MIN_DELAY_S
