"""Priority tiers: spillover shares at given health levels, and when panic fails open."""

from __future__ import annotations

import pytest

from router.state.snapshot import RegionState, RegionView
from router.state.tiers import plan_tiers
from tests.routing.test_strategies import view

H, U, E = RegionState.HEALTHY, RegionState.UNHEALTHY, RegionState.EJECTED


def tier_of(priority: int, healthy: int, total: int, *, down: RegionState = U) -> list[RegionView]:
    return [
        view(f"p{priority}-{i}", priority=priority, state=H if i < healthy else down)
        for i in range(total)
    ]


def shares(regions: list[RegionView], factor: float = 1.4, panic_at: float = 50.0) -> list[float]:
    tiers, panic = plan_tiers(tuple(regions), factor, panic_at)
    assert not panic
    return [round(t.share, 4) for t in tiers]


def test_a_healthy_tier_keeps_everything() -> None:
    assert shares(tier_of(0, 3, 3) + tier_of(1, 2, 2)) == [1.0, 0.0]


@pytest.mark.parametrize(
    ("healthy", "expected"),
    [
        (5, [1.0, 0.0]),
        (4, [1.0, 0.0]),  # 80% x 1.4 = 112, capped at 100
        (3, [0.84, 0.16]),  # 60% x 1.4 = 84
        (2, [0.56, 0.44]),  # 40% x 1.4 = 56: the example
        (1, [0.28, 0.72]),
        (0, [0.0, 1.0]),
    ],
)
def test_spillover_is_proportional_to_lost_health(healthy: int, expected: list[float]) -> None:
    assert shares(tier_of(0, healthy, 5) + tier_of(1, 2, 2)) == expected


def test_spill_passes_through_tiers_in_priority_order() -> None:
    # tier 0: 1 of 4 (35), tier 1: 1 of 2 (70, takes the remaining 65), tier 2: nothing left
    regions = tier_of(0, 1, 4) + tier_of(1, 1, 2) + tier_of(2, 1, 1)
    assert shares(regions) == [0.35, 0.65, 0.0]


def test_shares_are_normalised_when_capacity_runs_short() -> None:
    # 3 of 5 (84) + 1 of 10 (14) = 98 < 100, tier 0 is above the panic threshold
    assert shares(tier_of(0, 3, 5) + tier_of(1, 1, 10)) == [round(84 / 98, 4), round(14 / 98, 4)]


def test_tiers_list_only_eligible_regions() -> None:
    tiers, _ = plan_tiers(tuple(tier_of(0, 2, 3, down=E)), 1.4, 50.0)
    assert [r.id for r in tiers[0].regions] == ["p0-0", "p0-1"]
    assert tiers[0].health_percent == pytest.approx(200 / 3)


def test_one_of_three_healthy_is_panic_and_fails_open_to_all() -> None:
    regions = tier_of(0, 1, 3)
    tiers, panic = plan_tiers(tuple(regions), 1.4, 50.0)
    assert panic
    assert len(tiers) == 1 and tiers[0].share == 1.0
    assert {r.id for r in tiers[0].regions} == {"p0-0", "p0-1", "p0-2"}


def test_half_healthy_is_not_panic() -> None:
    tiers, panic = plan_tiers(tuple(tier_of(0, 1, 2)), 1.4, 50.0)
    assert not panic
    assert [r.id for r in tiers[0].regions] == ["p0-0"]


def test_all_down_everywhere_is_panic_over_every_tier() -> None:
    regions = tier_of(0, 0, 2) + tier_of(1, 0, 1, down=E)
    tiers, panic = plan_tiers(tuple(regions), 1.4, 50.0)
    assert panic
    assert {r.id for r in tiers[0].regions} == {"p0-0", "p0-1", "p1-0"}


def test_no_panic_while_the_tiers_together_have_capacity() -> None:
    # every tier is below 50%, but 40% x 1.4 twice = 112: enough healthy capacity (Envoy)
    tiers, panic = plan_tiers(tuple(tier_of(0, 2, 5) + tier_of(1, 2, 5)), 1.4, 50.0)
    assert not panic
    assert [round(t.share, 4) for t in tiers] == [0.56, 0.44]


def test_panic_threshold_zero_disables_panic() -> None:
    tiers, panic = plan_tiers(tuple(tier_of(0, 0, 3)), 1.4, 0.0)
    assert not panic
    assert tiers[0].share == 0.0 and tiers[0].regions == ()


def test_unknown_manual_and_weight_zero_regions_neither_count_nor_serve_in_panic() -> None:
    regions = [
        view("up", state=H),
        view("down1", state=U),
        view("down2", state=U),
        view("new", state=RegionState.UNKNOWN),
        view("held", state=RegionState.FAILED_OVER),
        view("drain", state=RegionState.DRAINING),
        view("zero", state=H, weight=0),
    ]
    tiers, panic = plan_tiers(tuple(regions), 1.4, 50.0)
    assert panic  # 1 of 3 counted regions
    assert {r.id for r in tiers[0].regions} == {"up", "down1", "down2"}


def test_no_counted_regions_means_no_tiers() -> None:
    assert plan_tiers((view("new", state=RegionState.UNKNOWN),), 1.4, 50.0) == ((), False)
