"""Per-process live load of each region: in-flight requests and the peak-EWMA latency cost.

Owned by the data plane of one process (a worker with several); mutated on the hot path,
read by the strategies. Nothing here does I/O. Formulas (docs/health-and-failover.md):

- a sample ``rtt`` slower than the cost replaces it at once (the "peak"); a faster one
  is blended in with weight ``1 - exp(-dt / DECAY_S)`` (Finagle's PeakEwma, tau 10 s);
- when a region goes quiet its estimate decays toward its active-probe RTT (or
  ``DEFAULT_RTT_S`` before any probe), so an idle region keeps a fresh, honest score;
- a failure is a penalty sample: twice the current estimate, at least
  ``FAILURE_PENALTY_MIN_S``, at most ``FAILURE_PENALTY_MAX_S``, so a region that fails fast
  never looks fast and repeated failures escalate;
- a request still waiting for its response is a lower bound on the latency
  (``observe_outstanding``), so a region that stops answering looks slow before any
  response arrives.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Protocol

DEFAULT_RTT_S = 0.030  # unmeasured regions (linkerd2-proxy's default)
DECAY_S = 10.0  # peak-EWMA decay time constant (Finagle / Linkerd)
FAILURE_PENALTY_MIN_S = 0.1  # a failure counts as a sample at least this slow
FAILURE_PENALTY_MAX_S = 10.0  # escalation stops here
MEAN_ALPHA = 0.2  # per-sample weight of the plain (non-peak) mean used by guarded failback


class _Region(Protocol):
    @property
    def id(self) -> str: ...


class Awaiting(Protocol):
    """What ``observe_awaiting`` reads of an exchange waiting for response headers."""

    @property
    def region(self) -> _Region | None: ...

    @property
    def sent_at(self) -> float: ...


QUANTILE_WINDOW_S = 10.0  # the p95 estimate covers the last one to two windows
QUANTILE_MIN_SAMPLES = 20  # fewer than this: no estimate (the caller falls back)
_BUCKET_BASE_S = 0.0005
_BUCKET_RATIO = 1.15  # buckets 15% wide: the estimate is within 15% of the true value
_BUCKETS = 80  # 0.5 ms .. ~35 s
_LOG_RATIO = math.log(_BUCKET_RATIO)


class WindowedQuantile:
    """Quantiles of recent response times: log-spaced buckets over two rolling windows.

    Finagle's backup requests read their delay from a windowed percentile histogram; this
    is the same idea at a fixed 15% resolution, O(1) per sample, no allocation after
    construction.
    """

    __slots__ = ("current", "previous", "window_end")

    def __init__(self) -> None:
        self.current = [0] * _BUCKETS
        self.previous = [0] * _BUCKETS
        self.window_end = 0.0

    def add(self, seconds: float, now: float) -> None:
        if now >= self.window_end:
            self._rotate(now)
        i = 0 if seconds <= _BUCKET_BASE_S else int(math.log(seconds / _BUCKET_BASE_S) / _LOG_RATIO)
        self.current[min(i, _BUCKETS - 1)] += 1

    def quantile(self, q: float, now: float) -> float | None:
        if now >= self.window_end:
            self._rotate(now)
        cur, prev = self.current, self.previous
        n = sum(cur) + sum(prev)
        if n < QUANTILE_MIN_SAMPLES:
            return None
        rank = q * n
        seen = 0
        for i in range(_BUCKETS):
            seen += cur[i] + prev[i]
            if seen >= rank:
                return _BUCKET_BASE_S * _BUCKET_RATIO ** (i + 1)  # the bucket's upper bound
        return _BUCKET_BASE_S * _BUCKET_RATIO**_BUCKETS

    def _rotate(self, now: float) -> None:
        stale = now - self.window_end >= QUANTILE_WINDOW_S  # quiet for a whole window
        self.previous, self.current = self.current, self.previous
        for i in range(_BUCKETS):
            self.current[i] = 0
            if stale:
                self.previous[i] = 0
        self.window_end = now + QUANTILE_WINDOW_S


HEDGE_MIN_DELAY_S = 0.002  # an automatic hedge delay never goes below this


def auto_hedge_delay(
    load: RegionLoad, probe_latency_s: float | None, now: float
) -> tuple[float, str]:
    """``hedging.delay: auto`` for a region: (seconds, where the figure comes from).

    The region's p95 of recent response times; until it has enough samples, twice its
    latency estimate stands in.
    """
    p95 = load.p95_s
    if p95 is not None:
        return max(HEDGE_MIN_DELAY_S, p95), "p95 of recent responses"
    estimate = 2.0 * load.latency_estimate(probe_latency_s, now)
    return max(HEDGE_MIN_DELAY_S, estimate), "2 x latency estimate (too few samples for a p95)"


class RegionLoad:
    __slots__ = (
        "cost_s",
        "inflight",
        "last_sample_at",
        "mean_s",
        "not_before",
        "p95_s",
        "quantiles",
    )

    def __init__(self) -> None:
        self.inflight = 0
        self.cost_s: float | None = None  # None until the first live sample
        self.last_sample_at = 0.0
        self.not_before = 0.0  # honour Retry-After: no new picks before this monotonic time
        # Per-sample EWMA of successful response times: robust to one slow outlier, which
        # the peak cost is not; guarded failback compares regions on it.
        self.mean_s: float | None = None
        # Only while hedging with an automatic delay: recent response times, and their p95
        # refreshed by the sweeper (None until enough samples).
        self.quantiles: WindowedQuantile | None = None
        self.p95_s: float | None = None

    def observe(self, rtt_s: float, now: float) -> None:
        """Peak-EWMA: jump up at once on a slow sample, decay toward faster ones."""
        cost = self.cost_s
        if cost is None or rtt_s > cost:
            self.cost_s = rtt_s
        else:
            w = math.exp(-(now - self.last_sample_at) / DECAY_S)
            self.cost_s = cost * w + rtt_s * (1.0 - w)
        self.last_sample_at = now
        mean = self.mean_s
        self.mean_s = rtt_s if mean is None else mean + MEAN_ALPHA * (rtt_s - mean)

    def record_time(self, rtt_s: float, now: float) -> None:
        """A response time for the p95 estimate (hedging with ``delay: auto``)."""
        q = self.quantiles
        if q is None:
            q = self.quantiles = WindowedQuantile()
        q.add(rtt_s, now)

    def observe_failure(self, now: float) -> None:
        """A failed attempt (5xx, reset, timeout, refused) as a penalty latency sample."""
        penalty = 2.0 * self._decayed_cost(now)
        penalty = min(FAILURE_PENALTY_MAX_S, max(FAILURE_PENALTY_MIN_S, penalty))
        self.cost_s = max(penalty, self._decayed_cost(now))
        self.last_sample_at = now

    def observe_outstanding(self, age_s: float, now: float) -> None:
        """A request unanswered for ``age_s``: the region is at least that slow right now."""
        if age_s > self._decayed_cost(now):
            self.cost_s = age_s
            self.last_sample_at = now

    def latency_estimate(self, probe_latency_s: float | None, now: float) -> float:
        """Live cost decayed toward the probe RTT when the region has been idle."""
        base = probe_latency_s if probe_latency_s is not None else DEFAULT_RTT_S
        cost = self.cost_s
        if cost is None:
            return base
        w = self._weight(now)
        return cost * w + base * (1.0 - w)

    def _weight(self, now: float) -> float:
        return math.exp(-max(0.0, now - self.last_sample_at) / DECAY_S)

    def _decayed_cost(self, now: float) -> float:
        cost = self.cost_s
        return 0.0 if cost is None else cost * self._weight(now)

    def __repr__(self) -> str:
        cost = "-" if self.cost_s is None else f"{self.cost_s * 1000:.1f}ms"
        return f"<RegionLoad inflight={self.inflight} cost={cost}>"


class LoadTable:
    """Region id -> RegionLoad; entries survive snapshot changes (ids are stable)."""

    __slots__ = ("_loads",)

    def __init__(self) -> None:
        self._loads: dict[str, RegionLoad] = {}

    def get(self, region_id: str) -> RegionLoad:
        load = self._loads.get(region_id)
        if load is None:
            load = self._loads[region_id] = RegionLoad()
        return load

    def items(self) -> list[tuple[str, RegionLoad]]:
        return list(self._loads.items())

    def observe_awaiting(self, awaiting: Iterable[Awaiting]) -> None:
        """Feed the age of the oldest request each region has not answered yet.

        ``awaiting`` are exchanges whose request was sent (at ``sent_at``) and whose
        response headers have not arrived. Called by the sweeper ten times a second, so a
        region that stops answering looks slow within ~100 ms, long before any response
        (or timeout) would tell.
        """
        now = time.monotonic()
        oldest: dict[str, float] = {}
        for ex in awaiting:
            region = ex.region
            if region is not None:
                age = now - ex.sent_at
                if age > oldest.get(region.id, 0.0):
                    oldest[region.id] = age
        for region_id, age in oldest.items():
            self.get(region_id).observe_outstanding(age, now)

    def refresh_p95(self, now: float) -> None:
        """Recompute each region's p95 estimate (the sweeper, ten times a second)."""
        for load in self._loads.values():
            q = load.quantiles
            if q is not None:
                load.p95_s = q.quantile(0.95, now)

    def __repr__(self) -> str:
        return f"<LoadTable {dict(self._loads)!r}>"
