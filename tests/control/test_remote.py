"""Other instances' changes and config reloads, decided synchronously (no store, no loop):
router/control/remote.py and router/control/reload.py over a real registry and book."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from router.control.persist import region_config_json
from router.control.reload import plan_reload
from router.control.remote import apply_operations, apply_regions
from router.errors import RegionConflict
from router.state.operations import FailoverOperation, OperationBook
from router.state.registry import Registry
from router.state.snapshot import RegionState
from tests.conftest import make_config

T0, WALL = 1000.0, 1_700_000_000.0


def registry() -> Registry:
    reg = Registry(
        make_config(
            [
                {"id": "a", "endpoint": "http://127.0.0.1:9101", "weight": 1},
                {"id": "b", "endpoint": "http://127.0.0.1:9102"},
            ]
        ),
        now=T0,
    )
    for region_id in ("a", "b"):
        reg.set_probe_verdict(region_id, True, T0, "probe ok", WALL)
    return reg


def runtime_region(region_id: str, port: int, **fields: Any) -> dict[str, Any]:
    reg = Registry(
        make_config([{"id": region_id, "endpoint": f"http://127.0.0.1:{port}", **fields}])
    )
    return region_config_json(reg.record(region_id).config)


def operation(region: str, op_id: str = "op-1", **fields: Any) -> FailoverOperation:
    return FailoverOperation(
        id=op_id,
        region=region,
        target=fields.pop("target", None),
        reason="maintenance",
        drain_s=0.0,
        created_at=WALL,
        expires_at=None,
        **fields,
    )


def test_a_registration_elsewhere_is_added_and_asks_for_probes() -> None:
    reg = registry()
    effects = apply_regions(reg, {"runtime:c": runtime_region("c", 9103)}, [], T0)
    assert reg.find("c") is not None and reg.record("c").source == "runtime"
    assert effects.sync_probes and effects.removals == [] and effects.problems == []


def test_a_patch_elsewhere_changes_only_the_patchable_fields() -> None:
    reg = registry()
    apply_regions(reg, {"runtime:c": runtime_region("c", 9103)}, [], T0)
    effects = apply_regions(reg, {"runtime:c": runtime_region("c", 9103, weight=7)}, [], T0)
    assert reg.record("c").config.weight == 7
    assert not effects.sync_probes  # same endpoint: the region keeps its state


def test_a_removal_elsewhere_is_left_to_control_to_drain() -> None:
    reg = registry()
    apply_regions(reg, {"runtime:c": runtime_region("c", 9103)}, [], T0)
    effects = apply_regions(reg, {}, ["runtime:c", "runtime:c", "runtime:a"], T0)
    assert effects.removals == ["c"]  # once; "a" is the file's, not a registration
    assert reg.find("c") is not None  # Control drains it before it goes


def test_a_registration_of_a_config_region_is_ignored_and_a_bad_one_reported() -> None:
    reg = registry()
    before = reg.record("a").config
    effects = apply_regions(
        reg,
        {"runtime:a": runtime_region("a", 9999), "runtime:x": {"id": "x"}},
        [],
        T0,
    )
    assert reg.record("a").config == before
    assert reg.find("x") is None
    assert [p.path for p in effects.problems] == ["state store: regions runtime:x.endpoint"]


def test_overrides_elsewhere_go_through_the_registry_and_respect_the_files_base() -> None:
    reg = registry()
    version = reg.snapshot().version
    apply_regions(reg, {"override:a": {"overrides": {"weight": 5}, "base": {"weight": 1}}}, [], T0)
    assert reg.record("a").config.weight == 5 and reg.record("a").overrides == {"weight": 5}
    assert reg.snapshot().version > version  # published
    # Made against another file value of weight: not this file's override.
    apply_regions(reg, {"override:b": {"overrides": {"weight": 9}, "base": {"weight": 3}}}, [], T0)
    assert reg.record("b").overrides == {}
    apply_regions(reg, {}, ["override:a"], T0)
    assert reg.record("a").config.weight == 1 and reg.record("a").overrides == {}


def test_set_overrides_is_for_config_regions_only() -> None:
    reg = registry()
    apply_regions(reg, {"runtime:c": runtime_region("c", 9103)}, [], T0)
    with pytest.raises(RegionConflict):
        reg.set_overrides("c", {"weight": 2}, T0)


def test_a_failover_elsewhere_holds_the_region_here_and_its_end_probes_it() -> None:
    reg, ops = registry(), OperationBook()
    op = operation("a", target="b")
    effects = apply_operations(reg, ops, {"active:a": op.to_json()}, [], T0, WALL)
    assert ops.active["a"] == op
    assert [(t.region, t.to_state) for t in effects.transitions] == [("a", RegionState.FAILED_OVER)]
    assert reg.snapshot().by_id["a"].failover_target == "b"
    effects = apply_operations(reg, ops, {}, ["active:a"], T0 + 1, WALL + 1)
    assert ops.active == {}
    assert [(o.id, o.ended_reason) for o in ops.ended] == [("op-1", "ended on another instance")]
    assert effects.check_now == ["a"]
    assert reg.record("a").manual is None


def test_the_ended_record_from_elsewhere_is_kept_as_it_was_written() -> None:
    reg, ops = registry(), OperationBook()
    apply_operations(reg, ops, {"active:a": operation("a").to_json()}, [], T0, WALL)
    ended = replace(operation("a"), state="ended", ended_at=WALL + 5, ended_reason="undo of op-1")
    apply_operations(reg, ops, {"ended:op-1": ended.to_json()}, ["active:a"], T0, WALL + 9)
    assert ops.ended == [ended]


def test_a_newer_operation_elsewhere_replaces_the_one_here() -> None:
    reg, ops = registry(), OperationBook()
    apply_operations(reg, ops, {"active:a": operation("a").to_json()}, [], T0, WALL)
    newer = operation("a", op_id="op-2")
    effects = apply_operations(reg, ops, {"active:a": newer.to_json()}, [], T0, WALL)
    assert ops.active["a"].id == "op-2"
    assert [(o.id, o.ended_reason) for o in ops.ended] == [("op-1", "replaced by operation op-2")]
    assert effects.transitions == []  # already failed over: no state change


def test_an_operation_on_an_unknown_region_is_ignored() -> None:
    reg, ops = registry(), OperationBook()
    effects = apply_operations(reg, ops, {"active:z": operation("z").to_json()}, [], T0, WALL)
    assert ops.active == {} and effects.transitions == []


def test_plan_reload_swaps_the_config_and_ends_operations_it_invalidates() -> None:
    reg, ops = registry(), OperationBook()
    ops.start(operation("a"))
    ops.start(operation("b", op_id="op-2"))
    reg.update_region("b", T0, weight=4)  # an override the new file changes under it
    new = make_config(
        [
            {"id": "a", "endpoint": "http://127.0.0.1:9201"},  # endpoint changed
            {"id": "b", "endpoint": "http://127.0.0.1:9102", "weight": 2},
        ]
    )
    plan = plan_reload(reg, ops, new, "api", T0, WALL)
    assert reg.config is new and plan.ops_changed and plan.result.ok
    assert plan.result.config_hash == new.config_hash
    assert list(ops.active) == ["b"]
    assert plan.result.diff is not None
    assert plan.result.diff.notes == [
        "a: failover operation ended (region endpoint changed in the config file)",
        "b: runtime override of weight dropped (the config file changed it)",
    ]
    assert reg.record("b").config.weight == 2


def test_plan_reload_of_the_same_file_changes_nothing_to_store() -> None:
    reg, ops = registry(), OperationBook()
    ops.start(operation("a"))
    plan = plan_reload(reg, ops, reg.config, "watch", T0, WALL)
    assert not plan.ops_changed and list(ops.active) == ["a"]
    assert plan.result.diff is not None and plan.result.diff.notes == []
