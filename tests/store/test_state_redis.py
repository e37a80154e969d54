"""RedisStateStore against a real redis-server: changes reach the other instance, creates race
atomically, leases are exclusive, and an outage fails writes fast, keeps the last known state
and, when Redis comes back empty, writes back what the instances held."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from router.cluster.coordination import Coordination
from router.config.loader import StateConfig
from router.store.docs import region_key
from router.store.files import StoreConflict, StoreWriteError
from router.store.redis import RedisStateStore
from tests.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)


class Changes:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any], list[str]]] = []
        self.event = asyncio.Event()

    async def __call__(self, kind: str, entries: dict[str, Any], deleted: list[str]) -> None:
        self.seen.append((kind, entries, deleted))
        self.event.set()

    async def wait(self, timeout_s: float = 2.0) -> tuple[str, dict[str, Any], list[str]]:
        await asyncio.wait_for(self.event.wait(), timeout_s)
        self.event.clear()
        return self.seen[-1]


@pytest.fixture
async def stores(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[RedisStateStore, RedisStateStore, Changes, Changes]]:
    config = StateConfig(backend="redis", url=redis_server.url, key_prefix="test:unit")
    a = RedisStateStore(config, tmp_path / "a", "a", CollectorRegistry())
    b = RedisStateStore(config, tmp_path / "b", "b", CollectorRegistry())
    ca, cb = Changes(), Changes()
    a.follow(changes=ca)
    b.follow(changes=cb)
    for s in (a, b):
        await s.open()
        await s.start()
    yield a, b, ca, cb
    for s in (a, b):
        await s.close()


def _region(region_id: str, port: int) -> dict[str, Any]:
    return {"id": region_id, "name": region_id, "endpoint": f"http://127.0.0.1:{port}"}


def _regions(*rcs: dict[str, Any]) -> dict[str, Any]:
    return {"runtime": list(rcs), "overrides": {}, "override_bases": {}}


async def test_a_change_reaches_the_other_instance_and_creates_race_atomically(
    stores: tuple[RedisStateStore, RedisStateStore, Changes, Changes],
) -> None:
    a, b, _, changes_b = stores
    started = time.monotonic()
    await a.write("regions", _regions(_region("r1", 1001)), create=region_key("r1"))
    kind, entries, deleted = await changes_b.wait()
    assert time.monotonic() - started < 1.0
    assert kind == "regions" and entries == {"runtime:r1": _region("r1", 1001)} and deleted == []
    assert b.load("regions")["runtime"] == [_region("r1", 1001)]

    # b registers the same id with its own endpoint: refused, Redis unchanged
    with pytest.raises(StoreConflict) as caught:
        await b.write("regions", _regions(_region("r1", 2002)), create=region_key("r1"))
    assert caught.value.current == _region("r1", 1001)

    # two new ids at once from two instances: both kept (entries, not whole documents)
    await asyncio.gather(
        a.write("regions", _regions(_region("r1", 1001), _region("r2", 1002))),
        b.write("regions", _regions(_region("r1", 1001), _region("r3", 1003))),
    )
    await asyncio.sleep(0.2)
    for s in (a, b):
        assert [r["id"] for r in s.load("regions")["runtime"]] == ["r1", "r2", "r3"]

    # a removal travels as a deleted entry
    changes_b.event.clear()
    await a.write("regions", _regions(_region("r2", 1002), _region("r3", 1003)))
    kind, entries, deleted = await changes_b.wait()
    assert deleted == ["runtime:r1"] and entries == {}


async def test_leases_are_exclusive_and_renewal_tells_who_holds(
    stores: tuple[RedisStateStore, RedisStateStore, Changes, Changes],
) -> None:
    a, b = (Coordination(s) for s in stores[:2])
    assert await a.acquire_lease("job:x", 5000)
    assert not await b.acquire_lease("job:x", 5000)
    assert await a.renew_lease("job:x", 5000)
    assert not await b.renew_lease("job:x", 5000)
    assert await b.lease_holder("job:x") == "a"
    await b.release_lease("job:x")  # not b's: nothing happens
    assert await a.lease_holder("job:x") == "a"
    await a.release_lease("job:x")
    assert await b.acquire_lease("job:x", 200)
    await asyncio.sleep(0.3)  # b's lease ran out
    assert await a.acquire_lease("job:x", 5000)


async def test_an_outage_fails_writes_fast_and_redis_comes_back_with_what_we_held(
    redis_server: RedisServer,
    stores: tuple[RedisStateStore, RedisStateStore, Changes, Changes],
) -> None:
    a, b, _, changes_b = stores
    await a.write("regions", _regions(_region("r1", 1001)), create=region_key("r1"))
    await changes_b.wait()
    redis_server.stop()
    with pytest.raises(StoreWriteError):
        await a.write("regions", _regions(_region("r1", 1001), _region("r2", 1002)))
    started = time.monotonic()
    with pytest.raises(StoreWriteError, match="unreachable"):
        await a.write("regions", _regions(_region("r1", 1001), _region("r2", 1002)))
    assert time.monotonic() - started < 0.1  # known down: no waiting for a timeout
    assert not a.connected
    assert a.load("regions")["runtime"] == [_region("r1", 1001)]  # the last known state
    assert a.status()["stale"] is True

    redis_server.start()  # empty
    deadline = time.monotonic() + 10
    while not (a.connected and b.connected):
        assert time.monotonic() < deadline, (a.status(), b.status())
        await asyncio.sleep(0.05)
    for s in (a, b):
        assert s.load("regions")["runtime"] == [_region("r1", 1001)]
    # and the shared store works again
    await b.write("regions", _regions(_region("r1", 1001), _region("r4", 1004)))
    deadline = time.monotonic() + 2
    while len(a.load("regions")["runtime"]) != 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
