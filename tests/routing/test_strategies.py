"""Strategies on literal snapshots: exact smooth-WRR sequences, P2C choices with a seeded rng,
peak-EWMA arithmetic, geo, affinity, capacity spill and tier draws."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import pytest

from router.config.loader import Endpoint
from router.routing.load import (
    DEFAULT_RTT_S,
    FAILURE_PENALTY_MAX_S,
    FAILURE_PENALTY_MIN_S,
    LoadTable,
    RegionLoad,
)
from router.routing.strategies import RequestInfo, Selector, power_of_two, rendezvous, smooth_wrr
from router.state.snapshot import RegionState, RegionView, RoutePlan, Snapshot
from router.state.tiers import plan_tiers
from tests.conftest import make_config

H = RegionState.HEALTHY


def view(
    region_id: str,
    *,
    weight: int = 100,
    priority: int = 0,
    state: RegionState = H,
    ramp: float = 1.0,
    labels: dict[str, str] | None = None,
    max_inflight: int = 0,
    probe_latency_s: float | None = None,
    failover_target: str | None = None,
    index: int = 0,
) -> RegionView:
    return RegionView(
        index=index,
        id=region_id,
        name=region_id,
        endpoint=Endpoint(
            url=f"http://{region_id}.test",
            scheme="http",
            host=f"{region_id}.test",
            port=80,
            base_path="",
        ),
        weight=weight,
        priority=priority,
        labels=MappingProxyType(labels or {}),
        max_inflight=max_inflight,
        ca_file=None,
        metrics_path=None,
        source="config",
        state=state,
        effective_weight=weight * ramp,
        probe_latency_s=probe_latency_s,
        failover_target=failover_target,
    )


def snapshot(regions: Sequence[RegionView], strategy: str = "latency", **sections: Any) -> Snapshot:
    config = make_config(
        [{"id": r.id, "endpoint": f"http://127.0.0.1:{9000 + i}"} for i, r in enumerate(regions)],
        strategy=strategy,
        **sections,
    )
    regions = tuple(regions)
    tiers, panic = plan_tiers(regions, 1.4, 50.0)
    plan = RoutePlan(route=None, strategy=strategy, regions=regions, tiers=tiers, panic=panic)
    return Snapshot(
        version=1,
        config=config,
        regions=regions,
        by_id=MappingProxyType({r.id: r for r in regions}),
        default_plan=plan,
        route_plans=(),
        panic=panic,
    )


def picks(selector: Selector, snap: Snapshot, n: int, **kw: Any) -> list[str]:
    out = []
    for _ in range(n):
        r = selector.choose(snap, snap.default_plan, kw.get("info"), kw.get("now", 0.0))
        assert r is not None
        out.append(r.id)
    return out


# -- smooth weighted round robin ---------------------------------------------------------


def test_smooth_wrr_5_1_1_is_the_nginx_sequence() -> None:
    regions = [view("a", weight=5), view("b", weight=1), view("c", weight=1)]
    state: dict[str, float] = {}
    seq = "".join(smooth_wrr(regions, state).id for _ in range(14))
    assert seq == "aabacaa" * 2


def test_weighted_strategy_follows_weights_exactly() -> None:
    snap = snapshot([view("a", weight=300), view("b", weight=100)], "weighted")
    assert "".join(picks(Selector(LoadTable()), snap, 8)) == "aaba" * 2


def test_round_robin_takes_turns_and_ramps_a_recovering_region() -> None:
    snap = snapshot([view("a"), view("b"), view("c")], "round_robin")
    assert "".join(picks(Selector(LoadTable()), snap, 6)) == "abcabc"
    ramping = snapshot(
        [view("a"), view("b", state=RegionState.RECOVERING, ramp=0.25)], "round_robin"
    )
    counts = Counter(picks(Selector(LoadTable()), ramping, 500))
    assert counts["b"] == 100  # 0.25 / 1.25 of the turns


# -- power of two choices ----------------------------------------------------------------


def test_p2c_keeps_the_cheaper_of_the_pair() -> None:
    regions = [view("a"), view("b"), view("c")]
    cost = {"a": 3.0, "b": 1.0, "c": 2.0}
    rng = random.Random(42)
    counts = Counter(power_of_two(regions, lambda r: cost[r.id], rng).id for _ in range(3000))
    # Pairs are uniform: b wins both of its pairs (2/3), c wins against a (1/3), a never.
    assert counts["a"] == 0
    assert counts["b"] == pytest.approx(2000, abs=90)
    assert counts["c"] == pytest.approx(1000, abs=90)


def test_p2c_with_a_seeded_rng_is_reproducible() -> None:
    regions = [view("a"), view("b"), view("c"), view("d")]
    cost = {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}

    def run() -> list[str]:
        rng = random.Random(7)
        return [power_of_two(regions, lambda r: cost[r.id], rng).id for _ in range(20)]

    first = run()
    assert first == run()
    assert "a" not in first  # the dearest never wins a pair


def test_p2c_breaks_ties_at_random_between_two() -> None:
    regions = [view("a"), view("b")]
    rng = random.Random(1)
    counts = Counter(power_of_two(regions, lambda r: 1.0, rng).id for _ in range(400))
    assert 150 < counts["a"] < 250


def test_latency_cost_is_latency_times_inflight_plus_one() -> None:
    loads = LoadTable()
    loads.get("a").observe(0.010, 0.0)
    loads.get("a").inflight = 3
    loads.get("b").observe(0.030, 0.0)
    sel = Selector(loads, random.Random(0))
    snap = snapshot([view("a"), view("b")])
    assert sel.latency_cost(snap.by_id["a"], 0.0) == pytest.approx(0.040)
    assert sel.latency_cost(snap.by_id["b"], 0.0) == pytest.approx(0.030)
    assert set(picks(sel, snap, 20)) == {"b"}


def test_a_ramping_region_looks_dearer() -> None:
    sel = Selector(LoadTable())
    r = view("a", state=RegionState.RECOVERING, ramp=0.5, probe_latency_s=0.010)
    assert sel.latency_cost(r, 0.0) == pytest.approx(0.020)


def test_least_outstanding_picks_fewer_in_flight_weighted() -> None:
    loads = LoadTable()
    loads.get("a").inflight = 5
    loads.get("b").inflight = 1
    snap = snapshot([view("a"), view("b")], "least_outstanding")
    assert set(picks(Selector(loads, random.Random(0)), snap, 20)) == {"b"}
    # weight 400 with 5 in flight (6/400) beats weight 100 with 1 (2/100)
    heavy = snapshot([view("a", weight=400), view("b")], "least_outstanding")
    assert set(picks(Selector(loads, random.Random(0)), heavy, 20)) == {"a"}


# -- peak EWMA ---------------------------------------------------------------------------


def test_unmeasured_region_gets_the_default_or_its_probe_rtt() -> None:
    load = RegionLoad()
    assert load.latency_estimate(None, 0.0) == DEFAULT_RTT_S
    assert load.latency_estimate(0.004, 0.0) == 0.004


def test_peak_ewma_rises_at_once_and_decays_with_a_10s_constant() -> None:
    load = RegionLoad()
    load.observe(0.010, 0.0)
    load.observe(0.500, 1.0)  # slower: taken at once
    assert load.cost_s == 0.500
    load.observe(0.010, 11.0)  # 10 s later, a fast sample has weight 1 - 1/e
    assert load.cost_s == pytest.approx(0.5 / math.e + 0.010 * (1 - 1 / math.e))


def test_an_idle_region_decays_toward_its_probe_rtt() -> None:
    load = RegionLoad()
    load.observe(1.0, 0.0)
    assert load.latency_estimate(0.005, 0.0) == 1.0
    assert load.latency_estimate(0.005, 10.0) == pytest.approx(
        1 / math.e + 0.005 * (1 - 1 / math.e)
    )
    assert load.latency_estimate(0.005, 100.0) == pytest.approx(0.005, abs=1e-4)


def test_failures_are_penalty_samples_that_escalate() -> None:
    load = RegionLoad()
    load.observe(0.001, 0.0)  # fails fast: 1 ms
    load.observe_failure(0.0)
    assert load.cost_s == FAILURE_PENALTY_MIN_S
    load.observe_failure(0.0)
    assert load.cost_s == pytest.approx(2 * FAILURE_PENALTY_MIN_S)
    for _ in range(20):
        load.observe_failure(0.0)
    assert load.cost_s == FAILURE_PENALTY_MAX_S


def test_a_fast_failing_region_loses_to_a_slower_working_one() -> None:
    loads = LoadTable()
    loads.get("fast503").observe(0.001, 0.0)
    loads.get("fast503").observe_failure(0.0)
    loads.get("ok").observe(0.020, 0.0)
    snap = snapshot([view("fast503"), view("ok")])
    assert set(picks(Selector(loads, random.Random(0)), snap, 20)) == {"ok"}


def test_outstanding_requests_are_a_lower_bound() -> None:
    load = RegionLoad()
    load.observe(0.005, 0.0)
    load.observe_outstanding(1.5, 0.1)
    assert load.cost_s == 1.5
    load.observe_outstanding(0.5, 0.2)  # younger than the estimate: no news
    assert load.cost_s == 1.5


def test_observe_awaiting_takes_each_regions_oldest_request() -> None:
    class Ex:
        def __init__(self, region: RegionView, age: float) -> None:
            import time

            self.region = region
            self.sent_at = time.monotonic() - age

    loads = LoadTable()
    a, b = view("a"), view("b")
    loads.observe_awaiting([Ex(a, 0.8), Ex(a, 0.2), Ex(b, 0.01)])
    assert loads.get("a").cost_s == pytest.approx(0.8, abs=0.05)
    assert loads.get("b").cost_s == pytest.approx(0.01, abs=0.05)


# -- geo ---------------------------------------------------------------------------------


def geo_snap() -> Snapshot:
    return snapshot(
        [
            view("us-east", labels={"geo": "NA"}),
            view("eu-west", labels={"geo": "eu"}),
            view("eu-central", labels={"geo": "eu"}),
            view("ap-south", labels={"geo": "ap"}),
        ],
        "geo",
        geo={"header": "X-Client-Region", "proximity": {"oc": ["ap-south", "us-east"]}},
    )


def test_geo_matches_the_client_region_to_labels_case_insensitively() -> None:
    sel = Selector(LoadTable(), random.Random(0))
    snap = geo_snap()
    assert set(picks(sel, snap, 10, info=RequestInfo(client_region="na"))) == {"us-east"}
    assert set(picks(sel, snap, 40, info=RequestInfo(client_region="eu"))) == {
        "eu-west",
        "eu-central",
    }


def test_geo_proximity_table_wins_in_order_of_preference() -> None:
    sel = Selector(LoadTable(), random.Random(0))
    snap = geo_snap()
    assert set(picks(sel, snap, 5, info=RequestInfo(client_region="oc"))) == {"ap-south"}
    # the first choice is out: the next one in the list
    plan = snap.default_plan
    r = sel.choose(snap, plan, RequestInfo(client_region="oc"), 0.0, exclude={"ap-south"})
    assert r is not None and r.id == "us-east"


def test_geo_without_a_match_falls_back_to_latency() -> None:
    loads = LoadTable()
    for rid in ("us-east", "eu-west", "eu-central"):
        loads.get(rid).observe(0.100, 0.0)
    loads.get("ap-south").observe(0.001, 0.0)
    sel = Selector(loads, random.Random(0))
    snap = geo_snap()
    got = Counter(picks(sel, snap, 60, info=RequestInfo(client_region="mars")))
    assert got.most_common(1)[0][0] == "ap-south"
    assert Counter(picks(sel, snap, 60, info=None)).most_common(1)[0][0] == "ap-south"


# -- affinity ----------------------------------------------------------------------------


def test_cookie_affinity_keeps_an_eligible_region_even_when_dearer() -> None:
    loads = LoadTable()
    loads.get("a").observe(1.0, 0.0)
    snap = snapshot([view("a"), view("b")])
    sel = Selector(loads, random.Random(0))
    assert set(picks(sel, snap, 5, info=RequestInfo(affinity_region="a"))) == {"a"}


@pytest.mark.parametrize(
    "state", [RegionState.UNHEALTHY, RegionState.EJECTED, RegionState.FAILED_OVER]
)
def test_cookie_affinity_is_reassigned_when_the_region_is_out(state: RegionState) -> None:
    snap = snapshot([view("a", state=state), view("b")])
    sel = Selector(LoadTable(), random.Random(0))
    assert set(picks(sel, snap, 5, info=RequestInfo(affinity_region="a"))) == {"b"}


def test_draining_keeps_existing_affinity_but_takes_no_new_sessions() -> None:
    snap = snapshot([view("a", state=RegionState.DRAINING), view("b")])
    sel = Selector(LoadTable(), random.Random(0))
    assert set(picks(sel, snap, 5, info=RequestInfo(affinity_region="a"))) == {"a"}
    assert set(picks(sel, snap, 5, info=None)) == {"b"}


def test_failed_over_with_a_target_sends_pinned_sessions_there() -> None:
    snap = snapshot(
        [view("a", state=RegionState.FAILED_OVER, failover_target="c"), view("b"), view("c")]
    )
    sel = Selector(LoadTable(), random.Random(0))
    assert set(picks(sel, snap, 5, info=RequestInfo(affinity_region="a"))) == {"c"}


def test_header_affinity_is_stable_and_moves_only_with_its_region() -> None:
    regions = [view("a"), view("b"), view("c")]
    keys = [f"session-{i}" for i in range(60)]
    before = {k: rendezvous(regions, k).id for k in keys}
    assert len(set(before.values())) == 3
    snap = snapshot([view("a"), view("b", state=RegionState.UNHEALTHY), view("c")])
    sel = Selector(LoadTable(), random.Random(0))
    for k in keys:
        got = sel.choose(snap, snap.default_plan, RequestInfo(affinity_key=k), 0.0)
        assert got is not None
        if before[k] != "b":
            assert got.id == before[k]
        else:
            assert got.id in {"a", "c"}


# -- capacity, Retry-After, tiers --------------------------------------------------------


def test_a_full_region_spills_to_the_next_best() -> None:
    loads = LoadTable()
    loads.get("a").observe(0.001, 0.0)
    loads.get("b").observe(0.100, 0.0)
    loads.get("a").inflight = 4
    snap = snapshot([view("a", max_inflight=4), view("b")])
    assert set(picks(Selector(loads, random.Random(0)), snap, 10)) == {"b"}


def test_each_of_n_workers_takes_its_share_of_max_inflight() -> None:
    loads = LoadTable()
    loads.get("a").observe(0.001, 0.0)
    loads.get("b").observe(0.100, 0.0)
    loads.get("a").inflight = 2  # half of 4: full for one worker of two
    snap = snapshot([view("a", max_inflight=4), view("b")])
    one_of_two = Selector(loads, random.Random(0))
    one_of_two.capacity_share = 0.5
    assert set(picks(one_of_two, snap, 10)) == {"b"}
    alone = Selector(loads, random.Random(0))
    assert "a" in picks(alone, snap, 10)


def test_when_every_region_is_full_the_least_utilised_takes_it() -> None:
    loads = LoadTable()
    loads.get("a").inflight = 4
    loads.get("b").inflight = 9
    snap = snapshot([view("a", max_inflight=4), view("b", max_inflight=10)])
    assert set(picks(Selector(loads, random.Random(0)), snap, 5)) == {"b"}


def test_retry_after_pauses_a_region() -> None:
    loads = LoadTable()
    loads.get("a").not_before = 10.0
    snap = snapshot([view("a"), view("b")])
    sel = Selector(loads, random.Random(0))
    assert set(picks(sel, snap, 10, now=5.0)) == {"b"}
    assert "a" in picks(sel, snap, 30, now=10.0)


def test_tier_draws_follow_spillover_shares() -> None:
    regions = [view(f"t0-{i}", state=H if i < 2 else RegionState.UNHEALTHY) for i in range(5)]
    regions += [view("t1-0", priority=1), view("t1-1", priority=1)]
    snap = snapshot(regions, "round_robin")
    counts = Counter(r[:2] for r in picks(Selector(LoadTable(), random.Random(3)), snap, 5000))
    assert counts["t0"] / 5000 == pytest.approx(0.56, abs=0.02)
    assert counts["t1"] / 5000 == pytest.approx(0.44, abs=0.02)


def test_priority_strategy_is_strict_active_passive() -> None:
    snap = snapshot([view("primary"), view("backup", priority=1)], "priority")
    sel = Selector(LoadTable(), random.Random(0))
    assert set(picks(sel, snap, 10)) == {"primary"}
    r = sel.choose(snap, snap.default_plan, None, 0.0, exclude={"primary"})
    assert r is not None and r.id == "backup"  # a retry moves to the next tier


def test_no_tiers_means_no_region() -> None:
    snap = snapshot([view("a", state=RegionState.UNKNOWN)])
    assert Selector(LoadTable()).choose(snap, snap.default_plan, None, 0.0) is None


@pytest.mark.parametrize(
    ("a_state", "b_state"),
    [
        # (cost sample s, sampled at, in flight, probe RTT, ramp) for each of two regions
        ((0.010, 0.0, 3, None, 1.0), (0.030, 0.0, 0, None, 1.0)),
        ((0.010, 0.0, 0, 0.050, 1.0), (None, 0.0, 0, 0.012, 1.0)),  # decayed toward the probe
        ((0.200, 5.0, 0, 0.001, 1.0), (0.020, 29.0, 0, 0.090, 1.0)),
        ((0.010, 30.0, 1, None, 0.3), (0.015, 30.0, 1, None, 1.0)),  # ramping looks dearer
        ((None, 0.0, 2, None, 1.0), (None, 0.0, 1, 0.070, 1.0)),
    ],
)
def test_the_selectors_latency_pick_agrees_with_latency_cost(
    a_state: tuple[Any, ...], b_state: tuple[Any, ...]
) -> None:
    """choose() picks from prepared candidates: it must pick what
    latency_cost (the formula /admin/route explains with) calls cheaper."""
    loads = LoadTable()
    regions = []
    for rid, (sample, at, inflight, probe, ramp) in (("a", a_state), ("b", b_state)):
        if sample is not None:
            loads.get(rid).observe(sample, at)
        loads.get(rid).inflight = inflight
        state = H if ramp == 1.0 else RegionState.RECOVERING
        regions.append(view(rid, probe_latency_s=probe, ramp=ramp, state=state))
    snap = snapshot(regions)
    sel = Selector(loads, random.Random(3))
    now = 30.0
    cost = {r.id: sel.latency_cost(snap.by_id[r.id], now) for r in regions}
    assert cost["a"] != cost["b"]
    cheaper = min(cost, key=lambda rid: cost[rid])
    assert set(picks(sel, snap, 10, now=now)) == {cheaper}
