"""Priority tiers, proportional spillover and panic (Envoy's priority-load rules), pure.

A tier's health is eligible / counted regions; multiplied by the overprovisioning factor and
capped at 100 it is the share of traffic the tier can take. Tiers are filled in priority
order; what a tier cannot take spills to the next. When the total is below 100 the shares
are normalised. When the total health is below the panic threshold the route fails open:
every region that is out for health reasons takes traffic again (operator-drained and
failed-over regions stay out).
"""

from __future__ import annotations

from itertools import groupby

from router.snapshot import MANUAL_STATES, RegionState, RegionView, Tier


def plan_tiers(
    regions: tuple[RegionView, ...],
    overprovisioning_factor: float,
    panic_threshold_percent: float,
) -> tuple[tuple[Tier, ...], bool]:
    """Return (tiers with traffic shares, panic) for the given candidate regions."""
    # Unprobed regions and operator-removed ones neither help nor hurt a tier's health.
    counted = [
        r
        for r in regions
        if r.state not in MANUAL_STATES and r.state is not RegionState.UNKNOWN and r.weight > 0
    ]
    counted.sort(key=lambda r: r.priority)
    groups = [(p, tuple(g)) for p, g in groupby(counted, key=lambda r: r.priority)]
    if not groups:
        return (), False

    healths: list[float] = []
    for _, members in groups:
        eligible = sum(1 for r in members if r.eligible)
        healths.append(100.0 * eligible / len(members))
    capacities = [min(100.0, h * overprovisioning_factor) for h in healths]
    total = min(100.0, sum(capacities))

    if total < panic_threshold_percent or total == 0.0:
        # Fail open: all counted regions, tiers still ordered, shares by capacity of the
        # tier's size so lower tiers are preferred only as much as they exist.
        tiers = tuple(
            Tier(
                priority=p,
                regions=members,
                share=1.0 if i == 0 else 0.0,
                health_percent=healths[i],
            )
            for i, (p, members) in enumerate(groups)
        )
        # In panic every counted region is a candidate: flatten into the first tier.
        all_members = tuple(r for _, m in groups for r in m)
        first = tiers[0]
        return (
            (
                Tier(
                    priority=first.priority,
                    regions=all_members,
                    share=1.0,
                    health_percent=first.health_percent,
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
    tiers_out: list[Tier] = []
    for i, (p, members) in enumerate(groups):
        eligible_members = tuple(r for r in members if r.eligible)
        tiers_out.append(
            Tier(
                priority=p,
                regions=eligible_members,
                share=loads[i] / norm if norm else 0.0,
                health_percent=healths[i],
            )
        )
    return tuple(tiers_out), False
