"""Passive outlier detection and guarded failback, from the outcomes of live attempts.

- ``consecutive_failures`` failed attempts in a row (connect failure, reset, timeout, 5xx)
  eject a region for ``base_ejection_time x times ejected`` (capped at
  ``max_ejection_time``; the registry keeps the multiplier).
- Never more than ``max_ejection_percent`` of the regions are ejected at once, and never
  the last eligible region.
- Guarded failback: while a region ramps back in (``recovering``), its attempts are
  compared with its healthy peers' over the same window. When its failure rate or its
  latency is clearly worse, it is ejected again at once, and that ejection is *sticky*:
  a passing health probe does not end it early, because probes already passed and live
  traffic still failed. The rules and thresholds are in docs/health-and-failover.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from router.state.registry import Registry, Transition
from router.state.snapshot import RegionState, Snapshot

# Guarded failback: "clearly worse" means all of these at once.
GUARD_MIN_FAILURES = 3  # at least this many failed attempts during the ramp
GUARD_FAILURE_RATIO = 2.0  # failure rate above twice the peers'...
GUARD_FAILURE_MARGIN = 0.10  # ...and at least 10 points above it
GUARD_MIN_REQUESTS = 10  # latency is judged after this many attempts during the ramp
GUARD_LATENCY_RATIO = 3.0  # mean latency above 3x the slowest healthy peer's...
GUARD_LATENCY_MARGIN_S = 0.050  # ...and at least 50 ms above it

LatencyOf = Callable[[str], float | None]


class _Stats:
    """Cumulative outcome counters of one region (this process's attempts)."""

    __slots__ = ("consecutive", "failures", "requests")

    def __init__(self) -> None:
        self.consecutive = 0
        self.requests = 0
        self.failures = 0


class OutlierDetector:
    def __init__(
        self,
        registry: Registry,
        on_transition: Callable[[Transition], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.on_transition = on_transition
        self.clock = clock
        self.wall = wall
        self._stats: dict[str, _Stats] = {}
        # recovering region -> every region's (requests, failures) when its ramp began
        self._ramps: dict[str, dict[str, tuple[int, int]]] = {}

    def __repr__(self) -> str:
        return f"<OutlierDetector regions={len(self._stats)} guarding={sorted(self._ramps)}>"

    # -- the hot path ------------------------------------------------------------------

    def record(self, region_id: str, ok: bool, kind: str) -> None:
        """Called for every upstream attempt's outcome (hot path: keep it cheap)."""
        s = self._stats.get(region_id)
        if s is None:
            s = self._stats[region_id] = _Stats()
        s.requests += 1
        if ok:
            s.consecutive = 0
            return
        s.failures += 1
        s.consecutive += 1
        n = s.consecutive
        if n >= self.registry.config.outlier_detection.consecutive_failures:
            s.consecutive = 0
            self._maybe_eject(
                region_id,
                f"outlier: {n} consecutive failures (last: {kind})",
                sticky=region_id in self._ramps,
            )
        elif region_id in self._ramps:
            reason = self._failure_guard(region_id, self.registry.snapshot())
            if reason is not None:
                self._maybe_eject(region_id, reason, sticky=True)

    # -- guarded failback --------------------------------------------------------------

    def begin_ramp(self, region_id: str) -> None:
        """A region started slow start: measure it (and its peers) from now on."""
        self._ramps[region_id] = {rid: (s.requests, s.failures) for rid, s in self._stats.items()}

    def end_ramp(self, region_id: str) -> None:
        self._ramps.pop(region_id, None)

    def guard(self, latency_of: LatencyOf) -> None:
        """Periodic check of every ramping region (failure rate and mean latency)."""
        snap = self.registry.snapshot()
        ramping = {r.id for r in snap.regions if r.state is RegionState.RECOVERING}
        for region_id in list(self._ramps):
            if region_id not in ramping:
                self.end_ramp(region_id)
        for region_id in ramping:
            if region_id not in self._ramps:
                self.begin_ramp(region_id)
                continue
            reason = self._failure_guard(region_id, snap) or self._latency_guard(
                region_id, snap, latency_of
            )
            if reason is not None:
                self._maybe_eject(region_id, reason, sticky=True)

    def _delta(self, region_id: str, baseline: dict[str, tuple[int, int]]) -> tuple[int, int]:
        s = self._stats.get(region_id)
        if s is None:
            return 0, 0
        r0, f0 = baseline.get(region_id, (0, 0))
        return s.requests - r0, s.failures - f0

    def _failure_guard(self, region_id: str, snap: Snapshot) -> str | None:
        baseline = self._ramps[region_id]
        n, failed = self._delta(region_id, baseline)
        if failed < GUARD_MIN_FAILURES:
            return None
        peers = _peers(snap, region_id)
        if not peers:
            return None
        peer_n = peer_failed = 0
        for peer in peers:
            pn, pf = self._delta(peer, baseline)
            peer_n += pn
            peer_failed += pf
        rate = failed / n
        peer_rate = peer_failed / peer_n if peer_n else 0.0
        if rate > max(GUARD_FAILURE_RATIO * peer_rate, peer_rate + GUARD_FAILURE_MARGIN):
            return (
                f"guarded failback: {failed}/{n} attempts failed during slow start "
                f"({rate:.0%} vs {peer_rate:.0%} on healthy peers)"
            )
        return None

    def _latency_guard(self, region_id: str, snap: Snapshot, latency_of: LatencyOf) -> str | None:
        n, _ = self._delta(region_id, self._ramps[region_id])
        mine = latency_of(region_id)
        if n < GUARD_MIN_REQUESTS or mine is None:
            return None
        theirs = [x for x in (latency_of(p) for p in _peers(snap, region_id)) if x is not None]
        if not theirs:
            return None
        worst = max(theirs)
        if mine > max(GUARD_LATENCY_RATIO * worst, worst + GUARD_LATENCY_MARGIN_S):
            return (
                f"guarded failback: mean latency {mine * 1000:.0f} ms during slow start vs "
                f"{worst * 1000:.0f} ms on the slowest healthy peer"
            )
        return None

    # -- ejection ----------------------------------------------------------------------

    def _maybe_eject(self, region_id: str, reason: str, *, sticky: bool = False) -> None:
        snap = self.registry.snapshot()
        region = snap.by_id.get(region_id)
        if region is None or not region.eligible:
            return
        if sum(1 for r in snap.regions if r.eligible) <= 1:
            return  # never the last eligible region
        ejected = sum(1 for r in snap.regions if r.state is RegionState.EJECTED)
        limit = snap.config.outlier_detection.max_ejection_percent / 100.0 * len(snap.regions)
        if ejected + 1 > limit:
            return  # max_ejection_percent: a strict cap (Envoy's post-#27909 meaning)
        t = self.registry.eject(region_id, self.clock(), self.wall(), reason, sticky=sticky)
        self.end_ramp(region_id)
        if t is not None:
            self.on_transition(t)


def _peers(snap: Snapshot, region_id: str) -> list[str]:
    """Healthy (fully ramped) regions other than this one."""
    return [r.id for r in snap.regions if r.state is RegionState.HEALTHY and r.id != region_id]
