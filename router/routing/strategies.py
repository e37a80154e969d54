"""Region selection: pure strategy functions and the per-process Selector that applies them.

The strategy functions take candidates plus the state they need and return a choice; the
``Selector`` keeps the little mutable state strategies have (smooth-WRR current weights)
and walks affinity, tiers, exclusions (regions already tried, Retry-After) and capacity
(``max_inflight``: a full region is skipped, so its traffic spills to the next-best one).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from math import exp

from router.config.loader import GeoConfig
from router.routing.load import DECAY_S, DEFAULT_RTT_S, LoadTable, RegionLoad
from router.state.snapshot import RegionState, RegionView, RoutePlan, Snapshot, Tier

# One candidate of a tier, prepared once per snapshot: the region, its live load (stable
# per region id) and its slow-start ramp factor.
Candidate = tuple[RegionView, RegionLoad, float]


@dataclass(slots=True)
class RequestInfo:
    """What selection may look at, read once from the request head."""

    client_region: str | None = None  # geo header value (lower-cased)
    affinity_region: str | None = None  # region id from the affinity cookie
    affinity_key: str | None = None  # session header value (rendezvous-hashed)


def _effective_weight(r: RegionView) -> float:
    return r.effective_weight


def ramp_factor(r: RegionView) -> float:
    """How far along its slow start a region is: 1.0 when fully in, down to 0.1 at the start."""
    return r.effective_weight / r.weight if r.weight > 0 else 0.0


def candidate_cost(r: RegionView, load: RegionLoad, ramp: float, now: float) -> float:
    """Peak-EWMA latency x (in-flight + 1), dearer while the region ramps up.

    ``RegionLoad.latency_estimate`` inlined: this runs twice per request.
    """
    estimate = r.probe_latency_s
    if estimate is None:
        estimate = DEFAULT_RTT_S
    cost = load.cost_s
    if cost is not None:
        idle = now - load.last_sample_at
        w = exp(-idle / DECAY_S) if idle > 0.0 else 1.0
        estimate = cost * w + estimate * (1.0 - w)
    estimate *= load.inflight + 1
    if ramp < 1.0:
        estimate /= max(ramp, 0.05)  # slow start: look dearer
    return estimate


def smooth_wrr(
    candidates: Sequence[RegionView],
    current: MutableMapping[str, float],
    weight: Callable[[RegionView], float] = _effective_weight,
) -> RegionView:
    """nginx's smooth weighted round robin: exact proportions, interleaved.

    Weights 5, 1, 1 give ``a a b a c a a``; equal weights give plain round robin.
    """
    total = 0.0
    best: RegionView | None = None
    best_value = 0.0
    for r in candidates:
        w = weight(r)
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
    """Pick two distinct candidates at random and keep the cheaper (P2C); ties at random."""
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
    ca, cb = cost(a), cost(b)
    if ca != cb:
        return a if ca < cb else b
    return a if rng.random() < 0.5 else b


def rendezvous(candidates: Sequence[RegionView], key: str) -> RegionView:
    """Highest-random-weight hashing: a key stays on its region while that region stays."""

    def score(r: RegionView) -> int:
        digest = hashlib.blake2b(f"{key}\0{r.id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big")

    return max(candidates, key=score)


def geo_candidates(
    client_region: str, geo: GeoConfig, candidates: Sequence[RegionView]
) -> list[RegionView]:
    """The candidates nearest the client, best first; empty when nothing matches.

    The proximity table (client region -> region ids in order of preference) wins: the
    first listed candidate is the answer. Otherwise every candidate whose ``geo.label``
    label (or id) equals the client region, compared case-insensitively.
    """
    preference = _lookup(geo.proximity, client_region)
    if preference:
        by_id = {r.id: r for r in candidates}
        for region_id in preference:
            r = by_id.get(region_id)
            if r is not None:
                return [r]
    label = geo.label
    return [
        r
        for r in candidates
        if r.id == client_region or r.labels.get(label, "").lower() == client_region
    ]


def _lookup(table: Mapping[str, tuple[str, ...]], key: str) -> tuple[str, ...] | None:
    found = table.get(key)
    if found is None and table:
        for k, v in table.items():
            if k.lower() == key:
                return v
    return found


class Selector:
    """Chooses a region for one attempt of one request (per process; not thread-safe)."""

    def __init__(self, loads: LoadTable, rng: random.Random | None = None) -> None:
        self.loads = loads
        self.rng = rng or random.Random()
        # This process's share of each region's max_inflight: 1/N in each of N workers,
        # so the region sees at most its limit in total.
        self.capacity_share = 1.0
        # smooth-WRR state per route; kept across snapshots (region ids are stable)
        self._wrr: dict[int, dict[str, float]] = {}
        # Candidates per tier of the current snapshot, built on first use (id(tier) -> the
        # tier itself, kept alive so its id stays its own, and its candidates).
        self._snapshot: Snapshot | None = None
        self._prepared: dict[int, tuple[Tier, tuple[Candidate, ...]]] = {}
        self._full: list[RegionView] = []  # scratch: regions at capacity, per choose()

    def __repr__(self) -> str:
        return f"<Selector routes={len(self._wrr)} {self.loads!r}>"

    def choose(
        self,
        snapshot: Snapshot,
        plan: RoutePlan,
        info: RequestInfo | None,
        now: float,
        exclude: frozenset[str] | set[str] = frozenset(),
    ) -> RegionView | None:
        if info is not None:
            pinned = self._affinity(snapshot, plan, info, now, exclude)
            if pinned is not None:
                return pinned
        tiers = plan.tiers
        if not tiers:
            return None
        full = self._full
        full.clear()
        for tier in self._tier_order(plan, tiers):
            usable = self._usable(self._candidates(snapshot, tier), now, exclude, full)
            if usable:
                return self._pick(snapshot, plan, usable, info, now)
        if full:
            # Every region with room is excluded: capacity is a preference, not a wall, so
            # the least-utilised full region takes the request rather than nobody.
            return min(full, key=self._utilisation)
        return None

    def _utilisation(self, r: RegionView) -> float:
        # A method, not a lambda in choose(): compiled, a lambda's closure is allocated on
        # every call of the function that holds it, used or not.
        return self.loads.get(r.id).inflight / r.max_inflight

    def _tier_order(self, plan: RoutePlan, tiers: tuple[Tier, ...]) -> Sequence[Tier]:
        """The tier this request draws by share first, then the others in priority order."""
        if plan.strategy == "priority" or len(tiers) == 1:
            return tiers  # strict active/passive: the first tier with a usable region
        x = self.rng.random()
        chosen = len(tiers) - 1
        for i, t in enumerate(tiers):
            x -= t.share
            if x < 0.0 and t.share > 0.0:
                chosen = i
                break
        if chosen == 0:
            return tiers
        return (tiers[chosen], *tiers[:chosen], *tiers[chosen + 1 :])

    def _candidates(self, snapshot: Snapshot, tier: Tier) -> tuple[Candidate, ...]:
        """The tier's regions with weight, their loads and ramps: built once per snapshot."""
        if snapshot is not self._snapshot:
            self._snapshot = snapshot
            self._prepared = {}
        found = self._prepared.get(id(tier))
        if found is not None and found[0] is tier:
            return found[1]
        get = self.loads.get
        prepared = tuple((r, get(r.id), ramp_factor(r)) for r in tier.regions if r.weight > 0)
        self._prepared[id(tier)] = (tier, prepared)
        return prepared

    def _usable(
        self,
        candidates: tuple[Candidate, ...],
        now: float,
        exclude: frozenset[str] | set[str],
        full: list[RegionView],
    ) -> Sequence[Candidate]:
        """The candidates that may take a request now; the prepared tuple itself when all may
        (the common case: nothing allocated)."""
        for r, load, _ in candidates:
            if (
                load.not_before > now
                or (exclude and r.id in exclude)
                or (r.max_inflight and load.inflight >= self.capacity(r))
            ):
                break
        else:
            return candidates
        out = []
        for c in candidates:
            r, load, _ = c
            if r.id in exclude:
                continue
            if load.not_before > now:
                continue  # the region asked for a pause (Retry-After)
            if r.max_inflight and load.inflight >= self.capacity(r):
                full.append(r)  # at capacity: spill to the next-best region
                continue
            out.append(c)
        return out

    def _pick(
        self,
        snapshot: Snapshot,
        plan: RoutePlan,
        candidates: Sequence[Candidate],
        info: RequestInfo | None,
        now: float,
    ) -> RegionView:
        n = len(candidates)
        if n == 1:
            return candidates[0][0]
        strategy = plan.strategy
        if strategy == "latency":
            return self._p2c_latency(candidates, now)
        regions = [c[0] for c in candidates]
        if strategy in ("weighted", "priority"):
            return smooth_wrr(regions, self._wrr_state(plan))
        if strategy == "round_robin":
            # equal turns, except that a region in slow start gets its ramped share
            return smooth_wrr(regions, self._wrr_state(plan), ramp_factor)
        if strategy == "least_outstanding":
            return power_of_two(regions, self.outstanding_cost, self.rng)
        if strategy == "geo" and info is not None and info.client_region:
            near = geo_candidates(info.client_region, snapshot.config.geo, regions)
            if len(near) == 1:
                return near[0]
            if near:
                regions = near
        return self._p2c_regions(regions, now)

    def _p2c_regions(self, regions: list[RegionView], now: float) -> RegionView:
        """P2C on latency cost over plain regions (geo); its own function so that _pick
        allocates no closure on every call."""
        return power_of_two(regions, lambda r: self.latency_cost(r, now), self.rng)

    def _p2c_latency(self, candidates: Sequence[Candidate], now: float) -> RegionView:
        """P2C on peak-EWMA cost: no closure, list or dict."""
        n = len(candidates)
        if n == 1:
            return candidates[0][0]
        random_ = self.rng.random
        if n == 2:
            a, b = candidates
        else:
            i = int(random_() * n)
            j = int(random_() * (n - 1))
            if j >= i:
                j += 1
            a, b = candidates[i], candidates[j]
        ca = candidate_cost(a[0], a[1], a[2], now)
        cb = candidate_cost(b[0], b[1], b[2], now)
        if ca != cb:
            return a[0] if ca < cb else b[0]
        return a[0] if random_() < 0.5 else b[0]

    def _wrr_state(self, plan: RoutePlan) -> dict[str, float]:
        key = id(plan.route)
        state = self._wrr.get(key)
        if state is None:
            state = self._wrr[key] = {}
        return state

    def latency_cost(self, r: RegionView, now: float) -> float:
        """Peak-EWMA latency x (in-flight + 1), dearer while the region ramps up."""
        return candidate_cost(r, self.loads.get(r.id), ramp_factor(r), now)

    def outstanding_cost(self, r: RegionView) -> float:
        """(In-flight + 1) / effective weight: Envoy's weighted least-request with bias 1."""
        return (self.loads.get(r.id).inflight + 1) / max(r.effective_weight, 1e-9)

    def _affinity(
        self,
        snapshot: Snapshot,
        plan: RoutePlan,
        info: RequestInfo,
        now: float,
        exclude: frozenset[str] | set[str],
    ) -> RegionView | None:
        """The region a session is pinned to, while it may still take that session."""
        if info.affinity_region is not None:
            r = snapshot.by_id.get(info.affinity_region)
            if r is None or r.id in exclude or r not in plan.regions:
                return None
            if r.failover_target is not None and not r.eligible:
                # An operator failed this region over to a named target: sessions follow.
                target = snapshot.by_id.get(r.failover_target)
                if (
                    target is not None
                    and target.eligible
                    and target.weight > 0
                    and target.id not in exclude
                    and target in plan.regions  # a target outside the route is not used
                    and self._has_room(target, now)
                ):
                    return target
            # A draining region keeps the sessions already pinned to it.
            if (r.eligible or r.state is RegionState.DRAINING) and self._has_room(r, now):
                return r
            return None  # reassigned: the proxy sets a new cookie for the region it picks
        if info.affinity_key is not None:
            # Hash over the regions taking traffic now (plus draining ones, which keep
            # their sessions), so a key moves only when its own region goes away.
            pool = [
                r
                for t in plan.tiers
                if t.share > 0.0
                for r in t.regions
                if r.eligible and r.id not in exclude and self._has_room(r, now)
            ]
            pool += [
                r
                for r in plan.regions
                if r.state is RegionState.DRAINING
                and r.id not in exclude
                and self._has_room(r, now)
            ]
            if pool:
                return rendezvous(pool, info.affinity_key)
        return None

    def _has_room(self, r: RegionView, now: float) -> bool:
        load = self.loads.get(r.id)
        if load.not_before > now:
            return False
        return not (r.max_inflight and load.inflight >= self.capacity(r))

    def capacity(self, r: RegionView) -> int:
        """In-flight requests this process may send to ``r`` (with ``max_inflight`` set)."""
        return max(1, math.ceil(r.max_inflight * self.capacity_share))
