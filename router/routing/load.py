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
    def deadline(self) -> float: ...


class RegionLoad:
    __slots__ = (
        "cost_s",
        "inflight",
        "last_sample_at",
        "mean_s",
        "not_before",
    )

    def __init__(self) -> None:
        self.inflight = 0
        self.cost_s: float | None = None  # None until the first live sample
        self.last_sample_at = 0.0
        self.not_before = 0.0  # honour Retry-After: no new picks before this monotonic time
        # Per-sample EWMA of successful response times: robust to one slow outlier, which
        # the peak cost is not; guarded failback compares regions on it.
        self.mean_s: float | None = None

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

    def observe_awaiting(self, awaiting: Iterable[Awaiting], headers_timeout_s: float) -> None:
        """Feed the age of the oldest request each region has not answered yet.

        ``awaiting`` are exchanges whose request was sent and whose response headers are
        due by ``deadline`` (sent at ``deadline - headers_timeout_s``). Called by the
        sweeper ten times a second, so a region that stops answering looks slow within
        ~100 ms, long before any response (or timeout) would tell.
        """
        now = time.monotonic()
        oldest: dict[str, float] = {}
        for ex in awaiting:
            region = ex.region
            if region is not None:
                age = now - (ex.deadline - headers_timeout_s)
                if age > oldest.get(region.id, 0.0):
                    oldest[region.id] = age
        for region_id, age in oldest.items():
            self.get(region_id).observe_outstanding(age, now)

    def __repr__(self) -> str:
        return f"<LoadTable {dict(self._loads)!r}>"
