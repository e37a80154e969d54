"""The shared state store: the control documents in Redis, every change announced to all hosts.

Each kind is a Redis hash of entries (router/store/docs.py); a write sends only the entries
that changed, in one Lua script that also checks ``create`` (an entry that must not exist
yet: the same 409 on two hosts as on one), bumps a sequence number and publishes the change
on ``<prefix>:events``. Every instance subscribes and hands other instances' changes to
``on_change``; a gap in the sequence (a missed message) triggers a full resynchronisation.
History is a capped list. Health verdicts and replication leases use the same connection
(router/cluster/coordination.py).

When Redis cannot be reached the store says so (``connected`` False): writes fail at once
with ``StoreWriteError`` (503 ``store_unavailable``), reads keep the last known documents,
and a background loop reconnects with backoff. On reconnect the instance reloads everything
and applies what changed meanwhile; when Redis came back without our data (restarted
empty, or failed over to a replica that missed it), it first writes back the entries it
holds that are missing, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Histogram
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from router.config.loader import StateConfig, redacted_url
from router.config.redis_url import SENTINEL_SCHEME, parse_sentinel_url
from router.metrics import GaugeCollector
from router.store.docs import ENTRY_KINDS, encode, join, split
from router.store.files import StoreConflict, StoreProblem, StoreWriteError

log = logging.getLogger("router.state")

HISTORY_KEEP = 1000
SOCKET_TIMEOUT_S = 2.0
OPEN_TIMEOUT_S = 3.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0
LISTEN_POLL_S = 0.5

# Changes an instance receives: kind, entries set (key -> value), entry keys deleted.
ChangeSink = Callable[[str, dict[str, Any], list[str]], Awaitable[None]]
HealthSink = Callable[[str, dict[str, Any], float], None]

_WRITE = """
local create = ARGV[2]
if create ~= '' then
  local current = redis.call('HGET', KEYS[1], create)
  if current then return {0, current} end
end
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local deletes = tonumber(ARGV[i])
i = i + 1
for _ = 1, deletes do
  redis.call('HDEL', KEYS[1], ARGV[i])
  i = i + 1
end
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], seq .. ' ' .. ARGV[i])
return {1, seq}
"""

_FILL = """
local added = 0
for i = 1, #ARGV, 2 do
  added = added + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
return added
"""


class RedisStateStore:
    """``StateStore`` on Redis, shared by every instance with the same ``key_prefix``."""

    backend = "redis"

    def __init__(
        self,
        config: StateConfig,
        state_dir: Path,
        instance_id: str,
        metrics: CollectorRegistry,
    ) -> None:
        self.config = config
        self.state_dir = Path(state_dir)
        self.instance_id = instance_id
        self.problems: list[StoreProblem] = []
        self.on_change: ChangeSink | None = None
        self.on_health: HealthSink | None = None
        self.on_reconnect: Callable[[], None] | None = None
        p = config.key_prefix
        self._keys = {kind: f"{p}:doc:{kind}" for kind in ENTRY_KINDS}
        self._history_key = f"{p}:history"
        self._seq_key = f"{p}:seq"
        self._epoch_key = f"{p}:epoch"
        self._events = f"{p}:events"
        self._health_channel = f"{p}:health"
        self._instances_key = f"{p}:instances"
        self._prefix = p
        self._client, self._sentinels = _client(config.url, f"region-router:{instance_id}")
        self._write_script = self._client.register_script(_WRITE)
        self._fill_script = self._client.register_script(_FILL)
        self._pubsub: PubSub | None = None
        self._known: dict[str, dict[str, Any]] = {kind: {} for kind in ENTRY_KINDS}
        self._history: list[Any] = []
        self._history_seen: set[bytes] = set()
        self._seq: int | None = None
        self._epoch: str | None = None
        self._connected = False
        self._broken = asyncio.Event()
        self._closing = False
        self._resync = False
        self._task: asyncio.Task[None] | None = None
        self.down_since: float | None = time.time()
        self.last_error: str | None = None
        self.writes = 0
        self.propagation_s: deque[float] = deque(maxlen=1000)
        self._register_metrics(metrics)

    def _register_metrics(self, metrics: CollectorRegistry) -> None:
        self.errors = Counter(
            "router_state_store_errors",
            "Failed calls to the shared state store, by operation",
            ["op"],
            registry=metrics,
        )
        self.reconnects = Counter(
            "router_state_store_reconnects",
            "Times the connection to the shared state store was re-established",
            registry=metrics,
        )
        self.propagation = Histogram(
            "router_state_propagation_seconds",
            "Time from a change written on another instance to it applied here",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=metrics,
        )
        metrics.register(
            GaugeCollector(
                "router_state_store_up",
                "1 while the shared state store is reachable",
                [],
                lambda: [([], 1.0 if self._connected else 0.0)],
            )
        )

    def __repr__(self) -> str:
        state = "connected" if self._connected else "disconnected"
        return f"<RedisStateStore {self._prefix} {state} seq={self._seq} writes={self.writes}>"

    @property
    def connected(self) -> bool:
        return self._connected

    def _pipeline(self, *, transaction: bool) -> Any:
        # Queued pipeline commands return the pipeline, typed as awaitables: use it untyped.
        return self._client.pipeline(transaction=transaction)

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and load everything; when Redis is down, start empty and keep trying."""
        try:
            await asyncio.wait_for(self._connect(initial=True), OPEN_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark_down("open", exc)
            log.warning(
                "state store %s unreachable at start (%s): serving the config file's regions "
                "and reconnecting in the background",
                self._url(),
                self.last_error,
            )

    async def start(self) -> None:
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="state-store")

    async def close(self) -> None:
        if self._task is not None:
            # A flag as well as cancel(): redis-py can turn a cancellation that lands in
            # its own timeout into a TimeoutError, which the loop would retry.
            self._closing = True
            self._broken.set()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._close_pubsub()
        await self._client.aclose()
        for sentinel_client in self._sentinels:  # the clients that ask the sentinels
            await sentinel_client.aclose()

    # -- documents ---------------------------------------------------------------------

    def load(self, kind: str) -> Any:
        if kind == "history":
            return list(self._history) if self._history else None
        return join(kind, self._known[kind])

    async def write(self, kind: str, data: Any, *, create: str | None = None) -> None:
        if kind == "history":
            await self._append_history(data)
            return
        entries = split(kind, data)
        known = self._known[kind]
        changed = {k: v for k, v in entries.items() if k not in known or known[k] != v}
        deleted = [k for k in known if k not in entries]
        if create is not None and create not in changed:
            changed[create] = entries[create]
        if not changed and not deleted:
            return
        self._check_up()
        body = orjson.dumps(
            {
                "from": self.instance_id,
                "kind": kind,
                "at": time.time(),
                "set": changed,
                "del": deleted,
            }
        )
        args: list[Any] = [self._events, create or "", len(changed)]
        for k, v in changed.items():
            args += [k, encode(v)]
        args += [len(deleted), *deleted, body]
        try:
            ok, result = await self._write_script(keys=[self._keys[kind], self._seq_key], args=args)
        except (RedisError, OSError) as exc:
            raise self._write_failed("write", exc) from None
        if not ok:
            assert create is not None
            raise StoreConflict(kind, create, orjson.loads(result))
        for k, v in changed.items():
            known[k] = v
        for k in deleted:
            known.pop(k, None)
        self.writes += 1

    async def shared_history(self) -> list[Any] | None:
        """The cluster's transition history from Redis; None when Redis cannot answer."""
        if not self._connected:
            return None
        try:
            raw = await asyncio.wait_for(self._lrange_history(), 1.0)
        except (RedisError, OSError, TimeoutError):
            return None
        out = []
        for item in raw:
            with contextlib.suppress(orjson.JSONDecodeError):
                out.append(orjson.loads(item))
        return out

    async def _lrange_history(self) -> list[bytes]:
        async with self._pipeline(transaction=False) as pipe:
            pipe.lrange(self._history_key, 0, -1)
            (raw,) = await pipe.execute()
        return list(raw)

    async def _append_history(self, items: Any) -> None:
        fresh = [(encode(t), t) for t in items or []]
        new = [raw for raw, _ in fresh if raw not in self._history_seen]
        if not new:
            return
        self._check_up()
        try:
            async with self._pipeline(transaction=True) as pipe:
                pipe.rpush(self._history_key, *new)
                pipe.ltrim(self._history_key, -HISTORY_KEEP, -1)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._write_failed("history", exc) from None
        self._history_seen = {raw for raw, _ in fresh}

    def remove_leftovers(self) -> list[str]:
        return []

    def set_aside(self, kind: str, reason: str) -> str | None:
        self.problem(kind, reason)
        return None

    def problem(self, kind: str, message: str, moved: str | None = None) -> None:
        log.error("%s", message)
        self.problems.append(StoreProblem(at=time.time(), kind=kind, message=message))

    def status(self) -> dict[str, Any]:
        prop = sorted(self.propagation_s)

        def pct(q: float) -> float | None:
            return round(prop[min(len(prop) - 1, int(q * len(prop)))] * 1000, 3) if prop else None

        return {
            "backend": "redis",
            "url": self._url(),
            "key_prefix": self._prefix,
            "connected": self._connected,
            "stale": not self._connected,
            "down_since": None if self._connected else self.down_since,
            "last_error": self.last_error,
            "writes": self.writes,
            "sequence": self._seq,
            "propagation_ms": {"p50": pct(0.5), "p99": pct(0.99), "samples": len(prop)},
        }

    # -- connection --------------------------------------------------------------------

    def _url(self) -> str:
        return redacted_url(self.config.url)

    @property
    def client(self) -> aioredis.Redis:
        return self._client

    @property
    def prefix(self) -> str:
        return self._prefix

    def check_up(self) -> None:
        """Raise StoreWriteError at once while Redis is known to be unreachable."""
        self._check_up()

    def failed(self, op: str, exc: BaseException) -> StoreWriteError:
        """Count a failed call, mark the store down, and the error to raise."""
        return self._write_failed(op, exc)

    def pipeline(self, *, transaction: bool) -> Any:
        return self._pipeline(transaction=transaction)

    def _check_up(self) -> None:
        if not self._connected:
            since = time.strftime("%H:%M:%S", time.localtime(self.down_since or time.time()))
            raise StoreWriteError(
                f"the shared state store ({self._url()}) is unreachable since {since} "
                f"({self.last_error}); reconnecting, retry the change then"
            )

    def _write_failed(self, op: str, exc: BaseException) -> StoreWriteError:
        self._mark_down(op, exc)
        return StoreWriteError(
            f"the shared state store ({self._url()}) failed: {self.last_error}; "
            "reconnecting, retry the change then"
        )

    def _mark_down(self, op: str, exc: BaseException) -> None:
        self.errors.labels(op).inc()
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._connected:
            log.warning(
                "state store %s unreachable (%s): routing on the last known state, admin "
                "writes refused until it is back",
                self._url(),
                self.last_error,
            )
            self._connected = False
            self.down_since = time.time()
        self._broken.set()

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._closing:
            if not self._connected:
                try:
                    await asyncio.wait_for(self._connect(initial=False), OPEN_TIMEOUT_S)
                except (RedisError, OSError, TimeoutError) as exc:
                    self._mark_down("connect", exc)
                    await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                    backoff = min(BACKOFF_MAX_S, backoff * 2)
                    continue
                backoff = BACKOFF_MIN_S
            try:
                await self._listen()  # returns when a command failed, or to resynchronise
            except (RedisError, OSError) as exc:
                self._mark_down("subscribe", exc)

    async def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped upstream
            self._pubsub = None

    async def _connect(self, *, initial: bool) -> None:
        """Subscribe, then load everything (messages up to the loaded sequence are skipped)."""
        await self._close_pubsub()
        self._broken.clear()
        pubsub = self._client.pubsub()
        self._pubsub = pubsub
        await pubsub.subscribe(self._events, self._health_channel)
        seq, epoch, docs, history = await self._fetch_all()
        if epoch is None or (self._epoch is not None and epoch != self._epoch):
            # Redis lost our data (or this is its first use): write back what we hold.
            restored = await self._fill_missing(docs)
            epoch = secrets.token_hex(8)
            if not await self._client.set(self._epoch_key, epoch, nx=True):
                epoch = _text(await self._client.get(self._epoch_key) or b"")
            if restored:
                log.warning("state store had lost %d entries; written back from here", restored)
                seq, _, docs, history = await self._fetch_all()
        self._epoch = epoch
        old = self._known
        self._known = {kind: dict(docs[kind]) for kind in ENTRY_KINDS}
        self._history = history
        self._history_seen = {encode(t) for t in history}
        self._seq = seq
        was_down = not self._connected
        self._connected = True
        self.down_since = None
        if not initial:
            if was_down:
                self.reconnects.inc()
                log.info("state store %s reachable again; resynchronised", self._url())
            await self._apply_differences(old, self._known)
            if self.on_reconnect is not None:
                self.on_reconnect()

    async def _fetch_all(
        self,
    ) -> tuple[int, str | None, dict[str, dict[str, Any]], list[Any]]:
        async with self._pipeline(transaction=True) as pipe:
            pipe.get(self._seq_key)
            pipe.get(self._epoch_key)
            for kind in ENTRY_KINDS:
                pipe.hgetall(self._keys[kind])
            pipe.lrange(self._history_key, 0, -1)
            replies = await pipe.execute()
        seq = int(replies[0] or 0)
        epoch = _text(replies[1]) if replies[1] is not None else None
        docs: dict[str, dict[str, Any]] = {}
        for i, kind in enumerate(ENTRY_KINDS):
            entries: dict[str, Any] = {}
            for k, v in replies[2 + i].items():
                try:
                    entries[_text(k)] = orjson.loads(v)
                except orjson.JSONDecodeError:
                    self.problem(kind, f"state store: unreadable entry {kind}/{_text(k)!r}")
            docs[kind] = entries
        history = []
        for raw in replies[-1]:
            with contextlib.suppress(orjson.JSONDecodeError):
                history.append(orjson.loads(raw))
        return seq, epoch, docs, history

    async def _fill_missing(self, docs: Mapping[str, dict[str, Any]]) -> int:
        added = 0
        for kind in ENTRY_KINDS:
            missing = {k: v for k, v in self._known[kind].items() if k not in docs[kind]}
            if missing:
                args: list[Any] = []
                for k, v in missing.items():
                    args += [k, encode(v)]
                added += int(await self._fill_script(keys=[self._keys[kind]], args=args))
        if self._history:
            async with self._pipeline(transaction=True) as pipe:
                pipe.llen(self._history_key)
                (length,) = await pipe.execute()
            if not length:
                await self._client.rpush(self._history_key, *(encode(t) for t in self._history))
        return added

    async def _apply_differences(
        self, old: Mapping[str, dict[str, Any]], new: Mapping[str, dict[str, Any]]
    ) -> None:
        if self.on_change is None:
            return
        for kind in ENTRY_KINDS:
            before, after = old.get(kind, {}), new[kind]
            changed = {k: v for k, v in after.items() if before.get(k) != v}
            deleted = [k for k in before if k not in after]
            if changed or deleted:
                await self.on_change(kind, changed, deleted)

    async def _listen(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        while not self._broken.is_set():
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=LISTEN_POLL_S)
            if msg is not None:
                if _text(msg["channel"]) == self._health_channel:
                    self._on_health_message(msg["data"])
                else:
                    await self._on_event(msg["data"])
            if self._resync:
                self._resync = False
                await self._connect(initial=False)
                return

    def _on_health_message(self, data: bytes) -> None:
        try:
            doc = orjson.loads(data)
            instance = str(doc.pop("instance"))
            ttl_s = float(doc.pop("ttl_ms")) / 1000.0
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        if instance != self.instance_id and self.on_health is not None:
            self.on_health(instance, doc, ttl_s)

    async def _on_event(self, data: bytes) -> None:
        head, _, body = data.partition(b" ")
        try:
            seq = int(head)
        except ValueError:
            return
        if self._seq is not None:
            if seq <= self._seq:
                return  # already in what we loaded
            if seq != self._seq + 1:
                log.warning("state store: missed changes %d..%d; resynchronising", self._seq, seq)
                self._seq = seq
                self._resync = True
                return
        self._seq = seq
        try:
            change = orjson.loads(body)
            kind = str(change["kind"])
            entries: dict[str, Any] = dict(change.get("set") or {})
            deleted = [str(k) for k in change.get("del") or []]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        if change.get("from") == self.instance_id or kind not in self._known:
            return
        known = self._known[kind]
        known.update(entries)
        for k in deleted:
            known.pop(k, None)
        if self.on_change is not None:
            await self.on_change(kind, entries, deleted)
        lag = max(0.0, time.time() - float(change.get("at") or time.time()))
        self.propagation_s.append(lag)
        self.propagation.observe(lag)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _client(url: str, name: str) -> tuple[aioredis.Redis, list[aioredis.Redis]]:
    """One server, or (``redis+sentinel://``) whichever server the sentinels call master.

    Also returns the clients that talk to the sentinels themselves, to close with it.
    """
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_TIMEOUT_S / 2,
        "retry": Retry(NoBackoff(), 0),
        "client_name": name[:100].replace(" ", "_"),
    }
    if not url.startswith(SENTINEL_SCHEME):
        return aioredis.Redis.from_url(url, **options), []
    target = parse_sentinel_url(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        list(target.sentinels),
        sentinel_kwargs={"socket_timeout": SOCKET_TIMEOUT_S},
        socket_timeout=SOCKET_TIMEOUT_S,
    )
    client: aioredis.Redis = sentinel.master_for(
        target.service, db=target.db, password=target.password, **options
    )
    return client, list(sentinel.sentinels)
