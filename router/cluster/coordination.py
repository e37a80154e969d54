"""Health verdicts and replication leases over the shared store's Redis link (store/redis_link.py).

Each instance keeps ``<prefix>:health:<instance>`` (its verdicts, with a TTL: its
heartbeat) and joins ``<prefix>:instances``; a verdict change is also published on
``<prefix>:health``. A lease is ``<prefix>:lease:<name>`` holding the instance id, set
with NX and a TTL, renewed by a script that checks the holder. Every call raises
``StoreWriteError`` when Redis is unreachable (and marks the store down).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import orjson
from redis.exceptions import RedisError

from router.store.redis import RedisStateStore
from router.store.redis_link import text

INSTANCE_FORGET_S = 3600.0  # instances silent this long leave the members set

_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Coordination:
    def __init__(self, store: RedisStateStore) -> None:
        self.store = store
        self.link = store.link
        self._instances_key = f"{store.link.prefix}:instances"
        self._health_channel = f"{store.link.prefix}:health"
        self._renew_script = store.link.client.register_script(_RENEW)
        self._release_script = store.link.client.register_script(_RELEASE)

    def __repr__(self) -> str:
        return f"<Coordination {self.link.prefix} {self.store.instance_id}>"

    async def put_health(self, doc: dict[str, Any], ttl_ms: int, *, announce: bool) -> None:
        """This instance's verdicts, alive for ``ttl_ms``; ``announce`` tells the others now."""
        self.link.check_up()
        payload = orjson.dumps(doc)
        now = time.time()
        try:
            async with self.link.pipeline(transaction=False) as pipe:
                pipe.set(f"{self.link.prefix}:health:{self.store.instance_id}", payload, px=ttl_ms)
                pipe.zadd(self._instances_key, {self.store.instance_id: now})
                if announce:
                    pipe.publish(
                        self._health_channel,
                        orjson.dumps({"instance": self.store.instance_id, "ttl_ms": ttl_ms, **doc}),
                    )
                pipe.zremrangebyscore(self._instances_key, 0, now - INSTANCE_FORGET_S)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self.link.failed("health", exc) from None

    async def fetch_health(self) -> dict[str, tuple[dict[str, Any], float]]:
        """Every instance with a live heartbeat: its verdicts and seconds left to live."""
        self.link.check_up()
        try:
            members = [text(m) for m in await self.link.client.zrange(self._instances_key, 0, -1)]
            if not members:
                return {}
            async with self.link.pipeline(transaction=False) as pipe:
                for m in members:
                    key = f"{self.link.prefix}:health:{m}"
                    pipe.get(key)
                    pipe.pttl(key)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self.link.failed("health", exc) from None
        out: dict[str, tuple[dict[str, Any], float]] = {}
        for i, m in enumerate(members):
            raw, ttl_ms = replies[2 * i], replies[2 * i + 1]
            if raw is None or ttl_ms is None or ttl_ms <= 0:
                continue
            with contextlib.suppress(orjson.JSONDecodeError):
                out[m] = (orjson.loads(raw), ttl_ms / 1000.0)
        return out

    def _lease_key(self, name: str) -> str:
        return f"{self.link.prefix}:lease:{name}"

    async def acquire_lease(self, name: str, ttl_ms: int) -> bool:
        self.link.check_up()
        try:
            got = await self.link.client.set(
                self._lease_key(name), self.store.instance_id, nx=True, px=ttl_ms
            )
        except (RedisError, OSError) as exc:
            raise self.link.failed("lease", exc) from None
        return bool(got)

    async def renew_lease(self, name: str, ttl_ms: int) -> bool:
        """Extend our lease (or take it again if it lapsed unclaimed); False: another has it."""
        self.link.check_up()
        try:
            kept = await self._renew_script(
                keys=[self._lease_key(name)], args=[self.store.instance_id, ttl_ms]
            )
        except (RedisError, OSError) as exc:
            raise self.link.failed("lease", exc) from None
        return bool(kept)

    async def release_lease(self, name: str) -> None:
        self.link.check_up()
        try:
            await self._release_script(keys=[self._lease_key(name)], args=[self.store.instance_id])
        except (RedisError, OSError) as exc:
            raise self.link.failed("lease", exc) from None

    async def lease_holder(self, name: str) -> str | None:
        self.link.check_up()
        try:
            holder = await self.link.client.get(self._lease_key(name))
        except (RedisError, OSError) as exc:
            raise self.link.failed("lease", exc) from None
        return text(holder) if holder is not None else None
