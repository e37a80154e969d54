"""Per-process live load of each region: in-flight requests and the peak-EWMA latency cost.

Owned by the data plane of one process (a worker with several); mutated on the hot path,
read by the strategies. Nothing here does I/O.
"""

from __future__ import annotations

import math

DEFAULT_RTT_S = 0.030  # unmeasured regions (linkerd2-proxy's default)
DECAY_S = 10.0  # peak-EWMA decay time constant (Finagle / Linkerd)
FAILURE_PENALTY_S = 1.0  # a failure counts as a sample this slow


class RegionLoad:
    __slots__ = ("consecutive_failures", "cost_s", "inflight", "last_sample_at", "not_before")

    def __init__(self) -> None:
        self.inflight = 0
        self.cost_s: float | None = None  # None until the first live sample
        self.last_sample_at = 0.0
        self.not_before = 0.0  # honour Retry-After: no new picks before this monotonic time
        self.consecutive_failures = 0

    def observe(self, rtt_s: float, now: float) -> None:
        """Peak-EWMA: jump up at once on a slow sample, decay toward faster ones."""
        cost = self.cost_s
        if cost is None or rtt_s > cost:
            self.cost_s = rtt_s
        else:
            w = math.exp(-(now - self.last_sample_at) / DECAY_S)
            self.cost_s = cost * w + rtt_s * (1.0 - w)
        self.last_sample_at = now

    def observe_failure(self, now: float, penalty_s: float = FAILURE_PENALTY_S) -> None:
        self.observe(max(penalty_s, (self.cost_s or 0.0) * 2.0), now)

    def latency_estimate(self, probe_latency_s: float | None, now: float) -> float:
        """Live cost decayed toward the probe RTT when the region has been idle."""
        base = probe_latency_s if probe_latency_s is not None else DEFAULT_RTT_S
        cost = self.cost_s
        if cost is None:
            return base
        w = math.exp(-(now - self.last_sample_at) / DECAY_S)
        return cost * w + base * (1.0 - w)

    def __repr__(self) -> str:
        return f"<RegionLoad inflight={self.inflight} cost={self.cost_s}>"


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
