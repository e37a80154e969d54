"""Region state: ejection backoff, slow start, tick transitions, bounded history, passive
outlier detection (caps, last region) and guarded failback, all on injected times."""

from __future__ import annotations

from typing import Any

import pytest

from router.health.outlier import OutlierDetector
from router.runtime import failover_reason
from router.state.registry import HISTORY_LIMIT, Registry, Transition
from router.state.snapshot import RegionState
from tests.conftest import make_config

H, R, E, U = (
    RegionState.HEALTHY,
    RegionState.RECOVERING,
    RegionState.EJECTED,
    RegionState.UNHEALTHY,
)
T0 = 1000.0


def registry(n: int = 3, **sections: Any) -> Registry:
    sections.setdefault(
        "outlier_detection",
        {
            "consecutive_failures": 3,
            "base_ejection_time": "10s",
            "max_ejection_time": "25s",
            "max_ejection_percent": "50%",
        },
    )
    sections.setdefault("failover", {"slow_start": "10s"})
    reg = Registry(
        make_config(
            [{"id": f"r{i}", "endpoint": f"http://127.0.0.1:{9100 + i}"} for i in range(n)],
            **sections,
        ),
        now=T0,
    )
    for i in range(n):
        reg.set_probe_verdict(f"r{i}", True, T0, "probe ok", T0)
    return reg


def states(reg: Registry) -> dict[str, RegionState]:
    return {r.id: r.state for r in reg.snapshot().regions}


def test_ejection_time_is_base_times_count_capped() -> None:
    reg = registry()
    durations = []
    for _ in range(4):
        reg.eject("r0", T0, T0, "outlier")
        until = reg.record("r0").ejected_until
        assert until is not None
        durations.append(until - T0)
    assert durations == [10.0, 20.0, 25.0, 25.0]


def test_ejection_ends_then_slow_start_then_healthy_with_reasons() -> None:
    reg = registry()
    reg.eject("r0", T0, T0, "outlier")
    assert reg.tick(T0 + 9.9, T0) == []
    [t] = reg.tick(T0 + 10.0, T0)
    assert (t.from_state, t.to_state, t.reason) == (E, R, "ejection time over")
    reg.tick(T0 + 12.5, T0)
    view = reg.snapshot().by_id["r0"]
    assert view.effective_weight == pytest.approx(25.0)  # 2.5 s of a 10 s ramp
    [t] = reg.tick(T0 + 20.0, T0)
    assert (t.to_state, t.reason) == (H, "slow start complete")
    assert reg.snapshot().by_id["r0"].effective_weight == 100


def test_slow_start_floor_is_ten_percent() -> None:
    reg = registry()
    reg.set_probe_verdict("r0", False, T0, "down", T0)
    reg.set_probe_verdict("r0", True, T0 + 1, "up", T0)
    assert reg.snapshot().by_id["r0"].effective_weight == pytest.approx(10.0)


def test_no_slow_start_at_start_up() -> None:
    reg = registry()
    assert set(states(reg).values()) == {H}


def test_the_ejection_multiplier_decays_while_the_region_stays_in() -> None:
    reg = registry()
    for _ in range(2):
        reg.eject("r0", T0, T0, "outlier")
    assert reg.record("r0").times_ejected == 2
    reg.tick(T0 + 20.0, T0)  # ejection over at T0 + 20
    reg.tick(T0 + 30.0, T0)
    assert reg.record("r0").times_ejected == 1
    reg.tick(T0 + 40.0, T0)
    assert reg.record("r0").times_ejected == 0
    reg.eject("r0", T0 + 50, T0, "outlier")
    assert reg.record("r0").ejected_until == T0 + 60.0  # back to the base time


def test_history_is_bounded_and_carries_reasons() -> None:
    reg = registry(n=1)
    for i in range(HISTORY_LIMIT):
        reg.set_probe_verdict("r0", i % 2 == 1, T0, f"flip {i}", T0)
    assert len(reg.history) == HISTORY_LIMIT
    last = reg.history[-1]
    assert (last.region, last.reason) == ("r0", f"flip {HISTORY_LIMIT - 1}")


# -- passive outlier detection -----------------------------------------------------------


class Clock:
    now = T0

    def __call__(self) -> float:
        return self.now


def detector(reg: Registry) -> tuple[OutlierDetector, list[Transition]]:
    seen: list[Transition] = []
    clock = Clock()
    od = OutlierDetector(reg, seen.append, clock=clock, wall=clock)
    return od, seen


def fail(od: OutlierDetector, region: str, n: int, kind: str = "503") -> None:
    for _ in range(n):
        od.record(region, False, kind)


def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    reg = registry()
    od, seen = detector(reg)
    fail(od, "r0", 2)
    od.record("r0", True, "")
    fail(od, "r0", 2)
    assert states(reg)["r0"] is H
    fail(od, "r0", 1, "reset")
    assert states(reg)["r0"] is E
    assert seen[-1].reason == "outlier: 3 consecutive failures (last: reset)"


def test_max_ejection_percent_is_a_strict_cap() -> None:
    reg = registry(n=4)  # 50% of 4: at most 2 ejected
    od, _ = detector(reg)
    for rid in ("r0", "r1", "r2"):
        fail(od, rid, 3)
    assert list(states(reg).values()).count(E) == 2
    assert states(reg)["r2"] is H


def test_the_last_eligible_region_is_never_ejected() -> None:
    reg = registry(
        n=2,
        outlier_detection={"consecutive_failures": 3, "max_ejection_percent": "100%"},
    )
    od, _ = detector(reg)
    fail(od, "r0", 3)
    fail(od, "r1", 30)
    assert states(reg) == {"r0": E, "r1": H}


def test_a_single_region_is_never_ejected() -> None:
    reg = registry(
        n=1, outlier_detection={"consecutive_failures": 1, "max_ejection_percent": "100%"}
    )
    od, _ = detector(reg)
    fail(od, "r0", 10)
    assert states(reg) == {"r0": H}


# -- guarded failback --------------------------------------------------------------------


def ramping(n: int = 3, **sections: Any) -> tuple[Registry, OutlierDetector, list[Transition]]:
    sections.setdefault(
        "outlier_detection", {"consecutive_failures": 100, "base_ejection_time": "10s"}
    )
    reg = registry(n, **sections)
    od, seen = detector(reg)
    for rid in ("r1", "r2")[: n - 1]:
        for _ in range(20):
            od.record(rid, True, "")
    reg.set_probe_verdict("r0", False, T0, "down", T0)
    reg.set_probe_verdict("r0", True, T0 + 1, "up", T0)
    assert states(reg)["r0"] is R
    od.begin_ramp("r0")
    return reg, od, seen


def test_a_recovering_region_failing_more_than_its_peers_is_ejected_at_once() -> None:
    reg, od, seen = ramping()
    for _ in range(4):
        od.record("r0", True, "")
        od.record("r1", True, "")
    fail(od, "r0", 2)
    assert states(reg)["r0"] is R  # 2 failures: not yet evidence
    fail(od, "r0", 1)
    assert states(reg)["r0"] is E
    assert seen[-1].reason.startswith("guarded failback: 3/7 attempts failed")
    assert reg.record("r0").eject_sticky


def test_guarded_failback_compares_with_peers_not_with_zero() -> None:
    reg, od, _ = ramping()
    for _ in range(10):
        od.record("r1", False, "503")  # peers fail as often: nothing to single out
        od.record("r2", True, "")
        od.record("r0", True, "")
        od.record("r0", False, "503")
    assert states(reg)["r0"] is R


def test_a_recovering_region_much_slower_than_its_peers_is_ejected() -> None:
    reg, od, seen = ramping()
    latency = {"r0": 0.400, "r1": 0.010, "r2": 0.020}
    for _ in range(9):
        od.record("r0", True, "")
    od.guard(latency.get)
    assert states(reg)["r0"] is R  # 9 attempts: too few to judge
    od.record("r0", True, "")
    od.guard(latency.get)
    assert states(reg)["r0"] is E
    assert seen[-1].reason.startswith("guarded failback: mean latency 400 ms")


def test_a_recovering_region_a_little_slower_stays() -> None:
    reg, od, _ = ramping()
    for _ in range(50):
        od.record("r0", True, "")
    od.guard({"r0": 0.045, "r1": 0.010, "r2": 0.020}.get)  # < 20 ms + 50 ms
    assert states(reg)["r0"] is R


def test_guard_follows_the_snapshot_when_ramps_end() -> None:
    reg, od, _ = ramping()
    reg.tick(T0 + 30.0, T0)
    od.guard(lambda rid: None)
    assert "r0" not in repr(od)


# -- metrics classification --------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_state", "to_state", "reason", "label"),
    [
        (H, U, "probe failed 3x: timeout", "health_check"),
        (H, E, "outlier: 5 consecutive failures (last: 503)", "outlier"),
        (R, E, "guarded failback: 3/7 attempts failed", "guarded_failback"),
        (H, RegionState.FAILED_OVER, "manual failover", "manual"),
        (H, RegionState.DRAINING, "manual failover", "manual"),
        (RegionState.UNKNOWN, U, "probe failed", None),  # never served: not a failover
        (RegionState.DRAINING, RegionState.FAILED_OVER, "drain period over", None),
        (E, R, "ejection time over", None),
    ],
)
def test_failover_reason_labels(
    from_state: RegionState, to_state: RegionState, reason: str, label: str | None
) -> None:
    t = Transition(at=0.0, region="r", from_state=from_state, to_state=to_state, reason=reason)
    assert failover_reason(t) == label
