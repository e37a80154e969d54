"""Quorum math, the registry's use of a quorum verdict, and the state documents as entries."""

from __future__ import annotations

from typing import Any

import pytest

from router.cluster.quorum import cluster_verdict, describe_quorum, quorum_down
from router.config.loader import config_from_mapping
from router.state.registry import LOCAL_DOUBT_FACTOR, Registry
from router.state.snapshot import RegionState
from router.store.docs import join, split


@pytest.mark.parametrize(
    ("down", "reporting", "quorum", "expected"),
    [
        (0, 3, None, False),
        (1, 3, None, False),  # one vantage point is not a majority
        (2, 3, None, True),
        (1, 2, None, False),  # a tie is not a majority: stays up
        (2, 2, None, True),
        (1, 1, None, True),
        (2, 4, None, False),
        (3, 4, None, True),
        (2, 4, 50.0, True),  # "at least 50%"
        (1, 3, 34.0, False),
        (1, 3, 33.0, True),
        # Route 53: healthy when more than 18% of checkers say healthy = down at 82%
        (9, 11, 82.0, False),  # 2 of 11 healthy = 18.2% > 18%: healthy
        (10, 11, 82.0, True),
        (0, 0, None, False),
        (0, 0, 50.0, False),
    ],
)
def test_quorum_down(down: int, reporting: int, quorum: float | None, expected: bool) -> None:
    assert quorum_down(down, reporting, quorum) is expected


def test_cluster_verdict_needs_two_reports_else_the_instance_decides() -> None:
    assert cluster_verdict({}, None) is None
    assert cluster_verdict({"a": False}, None) is None
    assert cluster_verdict({"a": False, "b": True}, None) is True
    assert cluster_verdict({"a": False, "b": True, "c": True}, None) is True
    assert cluster_verdict({"a": False, "b": False, "c": True}, None) is False
    assert cluster_verdict({"a": False, "b": True}, 50.0) is False
    assert describe_quorum(None) == "majority" and describe_quorum(82.0) == "82%"


def _registry(**sections: Any) -> Registry:
    config = config_from_mapping(
        {
            "regions": [
                {"id": "a", "endpoint": "http://127.0.0.1:9001"},
                {"id": "b", "endpoint": "http://127.0.0.1:9002"},
            ],
            "failover": {"slow_start": "0s"},
            **sections,
        },
        env={},
    )
    return Registry(config)


def test_the_quorum_verdict_wins_and_a_doubting_instance_keeps_a_tenth_of_the_weight() -> None:
    reg = _registry()
    for rid in ("a", "b"):
        reg.set_probe_verdict(rid, True, 1.0, "probe ok", 1.0)
    # this instance's probes fail b, the quorum says up: b stays in, at a tenth of its weight
    reg.set_probe_verdict("b", False, 2.0, "probe failed", 2.0)
    assert reg.snapshot().by_id["b"].state is RegionState.UNHEALTHY
    t = reg.set_quorum_verdict("b", True, 2.1, 2.1, "quorum: 1 of 3 down")
    assert t is not None and t.to_state is RegionState.HEALTHY
    b = reg.snapshot().by_id["b"]
    assert b.eligible and b.effective_weight == pytest.approx(100 * LOCAL_DOUBT_FACTOR)
    # the quorum says down: out, even where the probes pass
    t = reg.set_quorum_verdict("a", False, 3.0, 3.0, "quorum: 2 of 3 down")
    assert t is not None and t.to_state is RegionState.UNHEALTHY
    assert reg.snapshot().by_id["a"].state is RegionState.UNHEALTHY
    # no quorum (one instance left): its own verdict decides again, exactly as before
    reg.set_quorum_verdict("a", None, 4.0, 4.0, "alone")
    reg.set_quorum_verdict("b", None, 4.0, 4.0, "alone")
    assert reg.snapshot().by_id["a"].state is RegionState.HEALTHY
    assert reg.snapshot().by_id["b"].state is RegionState.UNHEALTHY
    assert reg.snapshot().by_id["a"].effective_weight == 100


def test_a_new_region_the_quorum_finds_up_serves_before_this_instance_probes_it() -> None:
    reg = _registry()
    assert reg.snapshot().by_id["a"].state is RegionState.UNKNOWN
    reg.set_quorum_verdict("a", True, 1.0, 1.0, "quorum")
    assert reg.snapshot().by_id["a"].state is RegionState.HEALTHY


DOCS: dict[str, Any] = {
    "regions": {
        "runtime": [
            {"id": "r1", "endpoint": "http://h:1", "weight": 5},
            {"id": "r2", "endpoint": "http://h:2"},
        ],
        "overrides": {"a": {"weight": 7}},
        "override_bases": {"a": {"weight": 100}},
    },
    "operations": {
        "active": [{"id": "op-1", "region": "a", "created_at": 1.0}],
        "ended": [
            {"id": "op-0", "region": "b", "ended_at": 0.5},
            {"id": "op-2", "region": "b", "ended_at": 2.0},
        ],
    },
    "replications": {
        "jobs": [{"id": "rep-1", "created_at": 1.0}, {"id": "rep-2", "created_at": 2.0}]
    },
    "artifacts": {
        "regions": {"a": {"endpoint": "http://h:1", "artifacts": {"m": "s1", "n": "s2"}}},
        "catalog": {"m": {"sha256": "s1", "source": "b", "read_at": 1.0}},
    },
}


@pytest.mark.parametrize("kind", sorted(DOCS))
def test_documents_split_into_entries_and_join_back(kind: str) -> None:
    entries = split(kind, DOCS[kind])
    assert join(kind, entries) == DOCS[kind]
    assert join(kind, {}) is None
    assert split(kind, None) == {}


def test_entry_keys_name_one_thing_each() -> None:
    assert set(split("regions", DOCS["regions"])) == {"runtime:r1", "runtime:r2", "override:a"}
    assert set(split("operations", DOCS["operations"])) == {"active:a", "ended:op-0", "ended:op-2"}
    assert set(split("artifacts", DOCS["artifacts"])) == {"copy:a/m", "copy:a/n", "catalog:m"}
