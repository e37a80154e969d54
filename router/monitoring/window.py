"""Recent traffic per region from periodic samples of the cumulative counters.

The hot path only increments counters; once a second the control plane samples them, and
rates, error ratios and latency percentiles over the last minutes come from differences
between samples. No per-request cost, and it works the same for summed worker counters.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import pairwise

from router.metrics import DURATION_BUCKETS_S, TrafficStats


@dataclass(frozen=True, slots=True)
class RegionTraffic:
    requests: int
    rps: float
    errors: int  # 5xx answers (the region's or the router's)
    error_rate: float
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float
    requests: dict[str, tuple[int, int]]  # region -> (total, 5xx)
    hist: dict[str, tuple[float, ...]]


class TrafficWindow:
    def __init__(self, keep_s: float = 600.0) -> None:
        self.keep_s = keep_s
        self._samples: deque[_Sample] = deque()

    def sample(self, stats: TrafficStats, now: float) -> None:
        requests: dict[str, list[int]] = {}
        for (region, _method, code), n in stats.requests.items():
            acc = requests.setdefault(region, [0, 0])
            acc[0] += n
            if code.startswith("5"):
                acc[1] += n
        self._samples.append(
            _Sample(
                at=now,
                requests={k: (v[0], v[1]) for k, v in requests.items()},
                hist={k: tuple(v) for k, v in stats.durations.items()},
            )
        )
        while self._samples and now - self._samples[0].at > self.keep_s:
            self._samples.popleft()

    def _pair(self, window_s: float) -> tuple[_Sample, _Sample] | None:
        if len(self._samples) < 2:
            return None
        last = self._samples[-1]
        first = self._samples[0]
        for s in self._samples:
            if last.at - s.at <= window_s:
                first = s
                break
        if first is last:
            first = self._samples[-2]
        return first, last

    def region(self, region_id: str, window_s: float = 60.0) -> RegionTraffic:
        pair = self._pair(window_s)
        if pair is None:
            return RegionTraffic(0, 0.0, 0, 0.0, None, None, None)
        a, b = pair
        ta, ea = a.requests.get(region_id, (0, 0))
        tb, eb = b.requests.get(region_id, (0, 0))
        n, errors = tb - ta, eb - ea
        span = max(b.at - a.at, 1e-9)
        ha = a.hist.get(region_id)
        hb = b.hist.get(region_id)
        counts: list[float] = []
        if hb is not None:
            counts = [x - (ha[i] if ha else 0.0) for i, x in enumerate(hb[:-1])]
        return RegionTraffic(
            requests=n,
            rps=n / span,
            errors=errors,
            error_rate=errors / n if n else 0.0,
            p50_s=percentile(counts, 0.50),
            p95_s=percentile(counts, 0.95),
            p99_s=percentile(counts, 0.99),
        )

    def series(
        self, region_id: str, window_s: float = 300.0
    ) -> list[tuple[float, float, float | None]]:
        """(time, rps, p95) per sample interval, for charts."""
        out: list[tuple[float, float, float | None]] = []
        samples = [s for s in self._samples if self._samples[-1].at - s.at <= window_s]
        for a, b in pairwise(samples):
            ta = a.requests.get(region_id, (0, 0))[0]
            tb = b.requests.get(region_id, (0, 0))[0]
            ha, hb = a.hist.get(region_id), b.hist.get(region_id)
            counts = [x - (ha[i] if ha else 0.0) for i, x in enumerate(hb[:-1])] if hb else []
            out.append((b.at, (tb - ta) / max(b.at - a.at, 1e-9), percentile(counts, 0.95)))
        return out


def percentile(counts: list[float], q: float) -> float | None:
    """Linear interpolation inside the histogram bucket that holds the q-th observation."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0.0
    lower = 0.0
    for i, n in enumerate(counts):
        upper = DURATION_BUCKETS_S[i] if i < len(DURATION_BUCKETS_S) else DURATION_BUCKETS_S[-1] * 2
        if cumulative + n >= rank and n > 0:
            return lower + (upper - lower) * (rank - cumulative) / n
        cumulative += n
        lower = upper
    return lower
