"""Priority tiers, proportional spillover and panic (Envoy's priority-load rules), pure.

A tier's health is eligible / counted regions x 100. Multiplied by the overprovisioning
factor and capped at 100 it is the tier's capacity: the share of traffic it can take.
Tiers are filled in priority order and what a tier cannot take spills to the next, so
with factor 1.4 a tier keeps everything down to ~71.4% healthy, and at 2 of 5 healthy
(40% x 1.4 = 56) it keeps 56% and spills 44%. When the capacities add up to less than
100 the shares are normalised over the tiers that have capacity.

Panic (fail open): when the capacities add up to less than 100 *and* every tier is below
``panic_threshold``, there are too few healthy regions to trust health at all, so every
region that is out for health reasons (unhealthy, ejected) takes traffic again, as one
flat candidate set. Operator-drained and failed-over regions stay out; regions not yet
probed (``unknown``) and weight-0 regions neither count nor serve.
"""

from __future__ import annotations

from itertools import groupby

from router.state.snapshot import MANUAL_STATES, RegionState, RegionView, Tier


def counts_for_tier(r: RegionView) -> bool:
    """Whether a region counts in its tier's health: probed, not held out by hand, weight > 0."""
    return r.state not in MANUAL_STATES and r.state is not RegionState.UNKNOWN and r.weight > 0


def plan_tiers(
    regions: tuple[RegionView, ...],
    overprovisioning_factor: float,
    panic_threshold_percent: float,
) -> tuple[tuple[Tier, ...], bool]:
    """Return (tiers with traffic shares, panic) for the given candidate regions."""
    counted = sorted(filter(counts_for_tier, regions), key=lambda r: r.priority)
    groups = [(p, tuple(g)) for p, g in groupby(counted, key=lambda r: r.priority)]
    if not groups:
        return (), False

    healths = [
        100.0 * sum(1 for r in members if r.eligible) / len(members) for _, members in groups
    ]
    capacities = [min(100.0, h * overprovisioning_factor) for h in healths]

    if sum(capacities) < 100.0 and all(h < panic_threshold_percent for h in healths):
        return (
            (
                Tier(
                    priority=groups[0][0],
                    regions=tuple(counted),
                    share=1.0,
                    health_percent=healths[0],
                ),
            ),
            True,
        )

    remaining = 100.0
    loads: list[float] = []
    for cap in capacities:
        take = min(remaining, cap)
        loads.append(take)
        remaining -= take
    norm = sum(loads)
    return (
        tuple(
            Tier(
                priority=p,
                regions=tuple(r for r in members if r.eligible),
                share=loads[i] / norm if norm else 0.0,
                health_percent=healths[i],
            )
            for i, (p, members) in enumerate(groups)
        ),
        False,
    )
