"""Why a region would serve a request, and what-if traffic splits; applies nothing.

Both run the real selection code (tiers, strategies, affinity) on a side ``Selector`` so
the proxy's own strategy state is never disturbed; what-if questions run on a clone of the
registry (``what_if``), so the live one is never touched either.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

from router.config.loader import Config
from router.routing.load import LoadTable, RegionLoad, auto_hedge_delay
from router.routing.routes import match_plan
from router.routing.strategies import RequestInfo, Selector
from router.state.registry import Registry
from router.state.snapshot import RegionView, RoutePlan, Snapshot

# Hypothetical states a what-if may give a region.
SIM_STATES = ("healthy", "up", "unhealthy", "down", "ejected", "failed_over", "draining")


def _candidate(
    r: RegionView, plan: RoutePlan, loads: LoadTable, selector: Selector, now: float
) -> dict[str, Any]:
    load = loads.get(r.id)
    tier = next((t for t in plan.tiers if r in t.regions), None)
    why_not = None
    if not r.eligible and not plan.panic:
        why_not = f"state {r.state.value}"
    elif r.weight <= 0:
        why_not = "weight 0"
    elif r.max_inflight and load.inflight >= r.max_inflight:
        why_not = f"at capacity ({load.inflight}/{r.max_inflight} in flight)"
    elif load.not_before > now:
        why_not = f"honouring Retry-After for {load.not_before - now:.1f}s"
    elif tier is None:
        why_not = "not in a tier with traffic"
    return {
        "id": r.id,
        "state": r.state.value,
        "eligible": why_not is None,
        "excluded_because": why_not,
        "weight": r.weight,
        "effective_weight": round(r.effective_weight, 3),
        "priority": r.priority,
        "tier_share": round(tier.share, 4) if tier is not None else 0.0,
        "latency_estimate_ms": round(load.latency_estimate(r.probe_latency_s, now) * 1000, 3),
        "inflight": load.inflight,
        "cost": round(selector.latency_cost(r, now) * 1000, 3),
    }


def explain(
    snapshot: Snapshot,
    loads: LoadTable,
    *,
    hostname: str,
    path: str,
    info: RequestInfo | None,
    now: float,
) -> dict[str, Any]:
    route_index, plan = match_plan(snapshot, hostname, path)
    side = Selector(loads, random.Random(0))
    candidates = [_candidate(r, plan, loads, side, now) for r in plan.regions]
    route = plan.route
    if route is not None and route.requires_artifact is not None:
        # Regions the route names that its artifact requirement left out of the plan.
        named = route.regions or tuple(r.id for r in snapshot.regions)
        kept = {r.id for r in plan.regions}
        for region_id in named:
            r = snapshot.by_id.get(region_id)
            if r is not None and r.id not in kept:
                held = r.artifacts.get(route.requires_artifact)
                candidates.append(
                    {
                        "id": r.id,
                        "state": r.state.value,
                        "eligible": False,
                        "excluded_because": (
                            f"holds {route.requires_artifact}@{held[:12]}, not the version "
                            "the route requires"
                            if held
                            else f"no verified copy of {route.requires_artifact}"
                        ),
                        "weight": r.weight,
                        "priority": r.priority,
                    }
                )
    usable = [c for c in candidates if c["eligible"]]
    winner = side.choose(snapshot, plan, info, now)
    reason = _reason(plan, winner, usable, info)
    return {
        "route": route_index,
        "strategy": plan.strategy,
        "panic": plan.panic,
        "tiers": tiers_json(plan),
        "candidates": candidates,
        "winner": winner.id if winner is not None else None,
        "reason": reason,
    }


IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


def explain_hedging(
    config: Config,
    winner: RegionView | None,
    loads: LoadTable,
    *,
    method: str,
    idempotency_key: bool,
    now: float,
) -> dict[str, Any]:
    """Whether this request would be hedged, after what delay, and where the delay comes from."""
    h = config.hedging
    out: dict[str, Any] = {
        "enabled": h.enabled,
        "delay": "auto" if h.delay_s is None else f"{h.delay_s * 1000:g}ms",
        "max_extra": h.max_extra,
        "budget_percent": h.budget_percent,
        "per_try_ms": round(config.timeouts.per_try_s * 1000, 3),
    }
    if not h.enabled:
        out["applies"], out["why"] = False, "hedging is off"
    elif method.upper() not in IDEMPOTENT and not idempotency_key:
        out["applies"], out["why"] = False, "not idempotent and no Idempotency-Key"
    elif winner is None:
        out["applies"], out["why"] = False, "no region would serve it"
    else:
        out["applies"] = True
        if h.delay_s is not None:
            delay, source = h.delay_s, "fixed hedging.delay"
        else:
            delay, source = auto_hedge_delay(loads.get(winner.id), winner.probe_latency_s, now)
        out["delay_ms"] = round(delay * 1000, 3)
        out["why"] = (
            f"a copy goes to another region if {winner.id} sends no response headers within "
            f"{delay * 1000:.1f}ms ({source}; body must fit retries.buffer_body_max)"
        )
    return out


def _reason(
    plan: RoutePlan,
    winner: RegionView | None,
    usable: list[dict[str, Any]],
    info: RequestInfo | None,
) -> str:
    if winner is None:
        return "no eligible region: the proxy would answer 503"
    if info is not None and info.affinity_region == winner.id:
        return "sticky session: the affinity cookie pins this region and it may serve"
    if info is not None and info.affinity_region is not None:
        pinned = next((c for c in usable if c["id"] == info.affinity_region), None)
        if pinned is None and winner.id in plan_target_of(plan, info.affinity_region):
            return (
                f"sticky session moved: {info.affinity_region} is failed over to {winner.id}, "
                "so the sessions pinned to it follow"
            )
    if plan.panic:
        return "panic: too few healthy regions, failing open to every region"
    if len(usable) == 1:
        return "the only eligible region"
    s = plan.strategy
    if s == "latency":
        best = min(usable, key=lambda c: c["cost"])
        return (
            f"lowest peak-EWMA cost (latency x (in-flight + 1)): {best['id']} at "
            f"{best['cost']} ms; power-of-two-choices picks the cheaper of two random regions"
        )
    if s == "least_outstanding":
        return "fewest requests in flight of two random candidates (P2C)"
    if s in ("weighted", "priority"):
        return "smooth weighted round robin: next in the weighted sequence of the first tier"
    if s == "round_robin":
        return "next in round-robin order"
    if s == "geo":
        return "nearest region to the client's region (proximity table or label), else latency"
    return s


def tiers_json(plan: RoutePlan) -> list[dict[str, Any]]:
    """A plan's tiers as the admin API shows them (explain and what-if alike)."""
    return [
        {
            "priority": t.priority,
            "share": round(t.share, 4),
            "health_percent": round(t.health_percent, 1),
            "regions": [r.id for r in t.regions],
        }
        for t in plan.tiers
    ]


def plan_target_of(plan: RoutePlan, region_id: str) -> tuple[str, ...]:
    """The failover target of ``region_id`` (empty when it has none)."""
    r = next((r for r in plan.regions if r.id == region_id), None)
    return (r.failover_target,) if r is not None and r.failover_target else ()


def what_if(
    live: Registry,
    now: float,
    wall: float,
    *,
    config: Config | None = None,
    states: Mapping[str, str] | None = None,
) -> Registry:
    """A clone of ``live`` with ``config`` applied as a reload would apply it (overrides,
    kept states, runtime regions) and then the hypothetical ``states`` forced.

    Regions the proposed config adds (or whose endpoint it changes) are assumed to pass
    their first check. An unknown region id in ``states`` raises ``UnknownRegion``.
    """
    side = live.clone(now)
    if config is not None and config is not side.config:
        kept = {id(rec) for rec in side.records()}
        side.apply_config(config, now)
        for rec in side.records():
            if id(rec) not in kept:
                side.set_probe_verdict(rec.config.id, True, now, "what-if: new region", wall)
    for region_id, state in (states or {}).items():
        side.assume_state(region_id, state, now)
    side.tick(now, wall)  # derive every region's state from the forced facts
    side.publish(now)
    return side


def traffic_split(
    snapshot: Snapshot,
    loads: LoadTable,
    plan: RoutePlan,
    now: float,
    samples: int = 10_000,
) -> dict[str, float]:
    """Share of new requests per region, by running the selector ``samples`` times."""
    side = Selector(loads, random.Random(1))
    counts: Counter[str] = Counter()
    for _ in range(samples):
        r = side.choose(snapshot, plan, None, now)
        counts[r.id if r is not None else "(503)"] += 1
    return {k: round(v / samples, 4) for k, v in sorted(counts.items())}


def hypothetical_loads(latencies_s: dict[str, float], base: LoadTable, now: float) -> LoadTable:
    """A LoadTable where the given regions have the given latency and nothing in flight."""
    table = LoadTable()
    for region_id, load in base.items():
        copy = table.get(region_id)
        copy.cost_s, copy.last_sample_at = load.cost_s, load.last_sample_at
    for region_id, latency in latencies_s.items():
        copy = table.get(region_id)
        copy.cost_s, copy.last_sample_at = latency, now
    return table


__all__ = ["RegionLoad", "explain", "hypothetical_loads", "tiers_json", "traffic_split"]
