"""Passive outlier detection: consecutive gateway failures from live traffic eject a region.

Ejection lasts ``base_ejection_time x times ejected`` (capped), never takes out more than
``max_ejection_percent`` of the regions, and never the last eligible one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from router.registry import Registry, Transition
from router.snapshot import RegionState


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
        self._consecutive: dict[str, int] = {}

    def record(self, region_id: str, ok: bool, kind: str) -> None:
        """Called for every upstream attempt's outcome (hot path: keep it cheap)."""
        if ok:
            if self._consecutive.get(region_id):
                self._consecutive[region_id] = 0
            return
        n = self._consecutive.get(region_id, 0) + 1
        self._consecutive[region_id] = n
        if n >= self.registry.config.outlier_detection.consecutive_failures:
            self._consecutive[region_id] = 0
            self._maybe_eject(region_id, kind)

    def _maybe_eject(self, region_id: str, kind: str) -> None:
        snap = self.registry.snapshot()
        region = snap.by_id.get(region_id)
        if region is None or not region.eligible:
            return
        eligible = [r for r in snap.regions if r.eligible]
        if len(eligible) <= 1:
            return  # never the last eligible region
        ejected = sum(1 for r in snap.regions if r.state is RegionState.EJECTED)
        limit = snap.config.outlier_detection.max_ejection_percent / 100.0 * len(snap.regions)
        if ejected + 1 > limit:
            return
        t = self.registry.eject(
            region_id, self.clock(), self.wall(), f"outlier: consecutive failures ({kind})"
        )
        if t is not None:
            self.on_transition(t)
