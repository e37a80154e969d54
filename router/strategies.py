"""Region selection: pure strategy functions and the per-process Selector that applies them.

The strategy functions take candidates plus the state they need and return a choice; the
``Selector`` keeps the little mutable state strategies have (smooth-WRR current weights,
round-robin counters) and walks tiers, exclusions, capacity and affinity.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass

from router.load import LoadTable
from router.snapshot import RegionState, RegionView, RoutePlan, Snapshot


@dataclass(slots=True)
class RequestInfo:
    """What selection may look at, read once from the request head."""

    client_region: str | None = None  # geo header value
    affinity_region: str | None = None  # region id from the affinity cookie
    affinity_key: str | None = None  # session header value (rendezvous-hashed)


def smooth_wrr(candidates: Sequence[RegionView], current: MutableMapping[str, float]) -> RegionView:
    """nginx's smooth weighted round robin: exact proportions, interleaved."""
    total = 0.0
    best: RegionView | None = None
    best_value = 0.0
    for r in candidates:
        w = r.effective_weight
        value = current.get(r.id, 0.0) + w
        current[r.id] = value
        total += w
        if best is None or value > best_value:
            best, best_value = r, value
    assert best is not None
    current[best.id] = best_value - total
    return best


def power_of_two(
    candidates: Sequence[RegionView],
    cost: Callable[[RegionView], float],
    rng: random.Random,
) -> RegionView:
    """Pick two distinct candidates at random and keep the cheaper (P2C)."""
    n = len(candidates)
    if n == 1:
        return candidates[0]
    if n == 2:
        a, b = candidates
    else:
        i = rng.randrange(n)
        j = rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = candidates[i], candidates[j]
    return a if cost(a) <= cost(b) else b


def rendezvous(candidates: Sequence[RegionView], key: str) -> RegionView:
    """Highest-random-weight hashing: a key stays on its region while that region stays."""

    def score(r: RegionView) -> int:
        digest = hashlib.blake2b(f"{key}\0{r.id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    return max(candidates, key=score)


def geo_order(
    client_region: str | None, snapshot: Snapshot, candidates: Sequence[RegionView]
) -> RegionView | None:
    """The candidate nearest the client: proximity table first, then a matching label."""
    if not client_region:
        return None
    geo = snapshot.config.geo
    by_id = {r.id: r for r in candidates}
    for region_id in geo.proximity.get(client_region, ()):
        if region_id in by_id:
            return by_id[region_id]
    for r in candidates:
        if r.labels.get(geo.label) == client_region or r.id == client_region:
            return r
    return None


class Selector:
    """Chooses a region for one attempt of one request (per process; not thread-safe)."""

    def __init__(self, loads: LoadTable, rng: random.Random | None = None) -> None:
        self.loads = loads
        self.rng = rng or random.Random()
        self._wrr: dict[tuple[int, int], dict[str, float]] = {}
        self._rr: dict[tuple[int, int], int] = {}
        self._version = -1

    def choose(
        self,
        snapshot: Snapshot,
        plan: RoutePlan,
        info: RequestInfo | None,
        now: float,
        exclude: frozenset[str] | set[str] = frozenset(),
    ) -> RegionView | None:
        if snapshot.version != self._version:
            self._version = snapshot.version
            # Keep WRR state across snapshots: only weights moved, the ids are stable.
        if info is not None:
            pinned = self._affinity(snapshot, plan, info, now, exclude)
            if pinned is not None:
                return pinned
        tiers = plan.tiers
        if not tiers:
            return None
        if plan.strategy == "priority" or len(tiers) == 1:
            order = tiers
        else:
            x = self.rng.random()
            chosen = len(tiers) - 1
            for i, t in enumerate(tiers):
                x -= t.share
                if x < 0.0 and t.share > 0.0:
                    chosen = i
                    break
            order = (tiers[chosen], *tiers[:chosen], *tiers[chosen + 1 :])
        for tier in order:
            candidates = self._usable(tier.regions, now, exclude)
            if candidates:
                return self._pick(snapshot, plan, candidates, info, now)
        return None

    def _usable(
        self, regions: Sequence[RegionView], now: float, exclude: frozenset[str] | set[str]
    ) -> list[RegionView]:
        loads = self.loads
        out = []
        for r in regions:
            if r.id in exclude or r.weight <= 0:
                continue
            load = loads.get(r.id)
            if load.not_before > now:
                continue
            if r.max_inflight and load.inflight >= r.max_inflight:
                continue  # at capacity: spill to the next-best region
            out.append(r)
        return out

    def _pick(
        self,
        snapshot: Snapshot,
        plan: RoutePlan,
        candidates: list[RegionView],
        info: RequestInfo | None,
        now: float,
    ) -> RegionView:
        if len(candidates) == 1:
            return candidates[0]
        strategy = plan.strategy
        key = (id(plan.route), 0)
        if strategy in {"weighted", "priority"}:
            return smooth_wrr(candidates, self._wrr.setdefault(key, {}))
        if strategy == "round_robin":
            n = self._rr.get(key, 0)
            self._rr[key] = n + 1
            return candidates[n % len(candidates)]
        loads = self.loads
        if strategy == "least_outstanding":
            return power_of_two(candidates, lambda r: loads.get(r.id).inflight, self.rng)
        if strategy == "geo" and info is not None:
            near = geo_order(info.client_region, snapshot, candidates)
            if near is not None:
                return near
        return power_of_two(candidates, lambda r: self.latency_cost(r, now), self.rng)

    def latency_cost(self, r: RegionView, now: float) -> float:
        load = self.loads.get(r.id)
        cost = load.latency_estimate(r.probe_latency_s, now) * (load.inflight + 1)
        if r.weight > 0 and r.effective_weight < r.weight:
            cost /= max(r.effective_weight / r.weight, 0.05)  # slow start: look dearer
        return cost

    def _affinity(
        self,
        snapshot: Snapshot,
        plan: RoutePlan,
        info: RequestInfo,
        now: float,
        exclude: frozenset[str] | set[str],
    ) -> RegionView | None:
        if info.affinity_region is not None:
            r = snapshot.by_id.get(info.affinity_region)
            if r is None or r.id in exclude or r not in plan.regions:
                return None
            if r.failover_target is not None and not r.eligible:
                # An operator failed this region over to a named target: sessions follow.
                target = snapshot.by_id.get(r.failover_target)
                if target is not None and target.eligible and target.id not in exclude:
                    return target
            # A draining region keeps the sessions already pinned to it.
            if r.eligible or r.state is RegionState.DRAINING:
                load = self.loads.get(r.id)
                if not (r.max_inflight and load.inflight >= r.max_inflight):
                    return r
            return None
        if info.affinity_key is not None:
            pool = [
                r
                for r in plan.regions
                if (r.eligible or r.state is RegionState.DRAINING) and r.id not in exclude
            ]
            if pool:
                return rendezvous(pool, info.affinity_key)
        return None
