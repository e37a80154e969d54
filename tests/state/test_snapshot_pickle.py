"""Snapshots go to worker processes pickled (router.workers.wire). Compiled, the snapshot
classes are native and mypyc drops ``slots=True``, so they pickle by their init fields:
this checks a whole snapshot comes back equal, frozen and with its derived fields, on
either build."""

from __future__ import annotations

import dataclasses

import pytest

from router.state.registry import Registry
from router.workers import wire
from tests.conftest import make_config

T0 = 1000.0


def test_a_snapshot_round_trips_through_the_worker_wire() -> None:
    reg = Registry(
        make_config(
            [{"id": f"r{i}", "endpoint": f"http://127.0.0.1:{9100 + i}"} for i in range(3)]
        ),
        now=T0,
    )
    reg.set_probe_verdict("r0", True, T0, "probe ok", T0)
    snap = reg.snapshot()
    back = wire.loads(wire.dumps(snap))
    assert type(back) is type(snap)
    assert back == snap
    assert back.regions == snap.regions
    assert back.default_plan == snap.default_plan
    assert back.by_id["r1"].region_header_line == b"X-Router-Region: r1\r\n"
    assert [r.eligible for r in back.regions] == [True, False, False]
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.regions[0].weight = 5  # type: ignore[misc]
