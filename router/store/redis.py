"""The shared state store: the control documents in Redis, every change announced to all hosts.

Each kind is a Redis hash of entries (router/store/docs.py); a write sends only the entries
that changed, in one Lua script that also checks ``create`` (an entry that must not exist
yet: the same 409 on two hosts as on one), bumps a sequence number and publishes the change
on ``<prefix>:events``. Every instance subscribes and hands other instances' changes to
``on_change``; a gap in the sequence (a missed message) triggers a full resynchronisation.
History is a capped list. Health verdicts and replication leases use the same connection
(router/store/redis_link.py, router/cluster/coordination.py); router/store/redis_changes.py
has the scripts and messages.

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
from prometheus_client import CollectorRegistry, Histogram
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from router.config.loader import StateConfig
from router.store.docs import ENTRY_KINDS, encode, join, split
from router.store.files import StoreConflict, StoreProblem
from router.store.redis_changes import (
    FILL,
    WRITE,
    decode_documents,
    decode_history,
    fill_args,
    parse_change,
    parse_health,
    split_event,
    write_args,
)
from router.store.redis_link import RedisLink, text

log = logging.getLogger("router.state")

HISTORY_KEEP = 1000
OPEN_TIMEOUT_S = 3.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0
LISTEN_POLL_S = 0.5

# Changes an instance receives: kind, entries set (key -> value), entry keys deleted.
ChangeSink = Callable[[str, dict[str, Any], list[str]], Awaitable[None]]
HealthSink = Callable[[str, dict[str, Any], float], None]


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
        # Set once by follow(): what the other instances' messages are handed to.
        self.on_change: ChangeSink | None = None
        self.on_health: HealthSink | None = None
        self.on_reconnect: Callable[[], None] | None = None
        p = config.key_prefix
        self.link = RedisLink(config.url, p, f"region-router:{instance_id}", metrics)
        self._keys = {kind: f"{p}:doc:{kind}" for kind in ENTRY_KINDS}
        self._history_key = f"{p}:history"
        self._seq_key = f"{p}:seq"
        self._epoch_key = f"{p}:epoch"
        self._events = f"{p}:events"
        self._health_channel = f"{p}:health"
        self._write_script = self.link.client.register_script(WRITE)
        self._fill_script = self.link.client.register_script(FILL)
        self._pubsub: PubSub | None = None
        self._known: dict[str, dict[str, Any]] = {kind: {} for kind in ENTRY_KINDS}
        self._history: list[Any] = []
        self._history_seen: set[bytes] = set()
        self._seq: int | None = None
        self._epoch: str | None = None
        self._closing = False
        self._resync = False
        self._task: asyncio.Task[None] | None = None
        self.writes = 0
        self.propagation_s: deque[float] = deque(maxlen=1000)
        self.propagation = Histogram(
            "router_state_propagation_seconds",
            "Time from a change written on another instance to it applied here",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=metrics,
        )

    def follow(
        self,
        *,
        changes: ChangeSink,
        health: HealthSink | None = None,
        reconnected: Callable[[], None] | None = None,
    ) -> None:
        """Follow the other instances: their stored changes go to ``changes`` (under the
        caller's write lock), their health verdicts to ``health``, and ``reconnected`` runs
        after Redis comes back (a full resynchronisation has happened)."""
        self.on_change, self.on_health, self.on_reconnect = changes, health, reconnected

    def __repr__(self) -> str:
        state = "connected" if self.link.connected else "disconnected"
        return f"<RedisStateStore {self.link.prefix} {state} seq={self._seq} writes={self.writes}>"

    @property
    def connected(self) -> bool:
        return self.link.connected

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and load everything; when Redis is down, start empty and keep trying."""
        try:
            await asyncio.wait_for(self._connect(initial=True), OPEN_TIMEOUT_S)
        except (RedisError, OSError, TimeoutError) as exc:
            self.link.mark_down("open", exc)
            log.warning(
                "state store %s unreachable at start (%s): serving the config file's regions "
                "and reconnecting in the background",
                self.link.url,
                self.link.last_error,
            )

    async def start(self) -> None:
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="state-store")

    async def close(self) -> None:
        if self._task is not None:
            # A flag as well as cancel(): redis-py can turn a cancellation that lands in
            # its own timeout into a TimeoutError, which the loop would retry.
            self._closing = True
            self.link.broken.set()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._close_pubsub()
        await self.link.close()

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
        self.link.check_up()
        args = write_args(self._events, self.instance_id, kind, changed, deleted, create)
        try:
            ok, result = await self._write_script(keys=[self._keys[kind], self._seq_key], args=args)
        except (RedisError, OSError) as exc:
            raise self.link.failed("write", exc) from None
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
        if not self.link.connected:
            return None
        try:
            raw = await asyncio.wait_for(self._lrange_history(), 1.0)
        except (RedisError, OSError, TimeoutError):
            return None
        return decode_history(raw)

    async def _lrange_history(self) -> list[bytes]:
        async with self.link.pipeline(transaction=False) as pipe:
            pipe.lrange(self._history_key, 0, -1)
            (raw,) = await pipe.execute()
        return list(raw)

    async def _append_history(self, items: Any) -> None:
        fresh = [(encode(t), t) for t in items or []]
        new = [raw for raw, _ in fresh if raw not in self._history_seen]
        if not new:
            return
        self.link.check_up()
        try:
            async with self.link.pipeline(transaction=True) as pipe:
                pipe.rpush(self._history_key, *new)
                pipe.ltrim(self._history_key, -HISTORY_KEEP, -1)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self.link.failed("history", exc) from None
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

        link = self.link
        return {
            "backend": "redis",
            "url": link.url,
            "key_prefix": link.prefix,
            "connected": link.connected,
            "stale": not link.connected,
            "down_since": None if link.connected else link.down_since,
            "last_error": link.last_error,
            "writes": self.writes,
            "sequence": self._seq,
            "propagation_ms": {"p50": pct(0.5), "p99": pct(0.99), "samples": len(prop)},
        }

    # -- following Redis ---------------------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._closing:
            if not self.link.connected:
                try:
                    await asyncio.wait_for(self._connect(initial=False), OPEN_TIMEOUT_S)
                except (RedisError, OSError, TimeoutError) as exc:
                    self.link.mark_down("connect", exc)
                    await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                    backoff = min(BACKOFF_MAX_S, backoff * 2)
                    continue
                backoff = BACKOFF_MIN_S
            try:
                await self._listen()  # returns when a command failed, or to resynchronise
            except (RedisError, OSError) as exc:
                self.link.mark_down("subscribe", exc)

    async def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped upstream
            self._pubsub = None

    async def _connect(self, *, initial: bool) -> None:
        """Subscribe, then load everything (messages up to the loaded sequence are skipped)."""
        await self._close_pubsub()
        self.link.broken.clear()
        client = self.link.client
        pubsub = client.pubsub()
        self._pubsub = pubsub
        await pubsub.subscribe(self._events, self._health_channel)
        seq, epoch, docs, history = await self._fetch_all()
        if epoch is None or (self._epoch is not None and epoch != self._epoch):
            # Redis lost our data (or this is its first use): write back what we hold.
            restored = await self._fill_missing(docs)
            epoch = secrets.token_hex(8)
            if not await client.set(self._epoch_key, epoch, nx=True):
                epoch = text(await client.get(self._epoch_key) or b"")
            if restored:
                log.warning("state store had lost %d entries; written back from here", restored)
                seq, _, docs, history = await self._fetch_all()
        self._epoch = epoch
        old = self._known
        self._known = {kind: dict(docs[kind]) for kind in ENTRY_KINDS}
        self._history = history
        self._history_seen = {encode(t) for t in history}
        self._seq = seq
        was_down = self.link.mark_up()
        if not initial:
            if was_down:
                self.link.reconnects.inc()
                log.info("state store %s reachable again; resynchronised", self.link.url)
            await self._apply_differences(old, self._known)
            if self.on_reconnect is not None:
                self.on_reconnect()

    async def _fetch_all(
        self,
    ) -> tuple[int, str | None, dict[str, dict[str, Any]], list[Any]]:
        async with self.link.pipeline(transaction=True) as pipe:
            pipe.get(self._seq_key)
            pipe.get(self._epoch_key)
            for kind in ENTRY_KINDS:
                pipe.hgetall(self._keys[kind])
            pipe.lrange(self._history_key, 0, -1)
            replies = await pipe.execute()
        seq = int(replies[0] or 0)
        epoch = text(replies[1]) if replies[1] is not None else None

        def unreadable(kind: str, key: str) -> None:
            self.problem(kind, f"state store: unreadable entry {kind}/{key!r}")

        docs = decode_documents(replies[2:-1], unreadable)
        return seq, epoch, docs, decode_history(replies[-1])

    async def _fill_missing(self, docs: Mapping[str, dict[str, Any]]) -> int:
        added = 0
        for kind in ENTRY_KINDS:
            missing = {k: v for k, v in self._known[kind].items() if k not in docs[kind]}
            if missing:
                added += int(
                    await self._fill_script(keys=[self._keys[kind]], args=fill_args(missing))
                )
        if self._history:
            async with self.link.pipeline(transaction=True) as pipe:
                pipe.llen(self._history_key)
                (length,) = await pipe.execute()
            if not length:
                history = (encode(t) for t in self._history)
                await self.link.client.rpush(self._history_key, *history)
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
        while not self.link.broken.is_set():
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=LISTEN_POLL_S)
            if msg is not None:
                if text(msg["channel"]) == self._health_channel:
                    self._on_health_message(msg["data"])
                else:
                    await self._on_event(msg["data"])
            if self._resync:
                self._resync = False
                await self._connect(initial=False)
                return

    def _on_health_message(self, data: bytes) -> None:
        verdicts = parse_health(data)
        if verdicts is not None and verdicts[0] != self.instance_id and self.on_health is not None:
            self.on_health(*verdicts)

    async def _on_event(self, data: bytes) -> None:
        event = split_event(data)
        if event is None:
            return
        seq, body = event
        if self._seq is not None:
            if seq <= self._seq:
                return  # already in what we loaded
            if seq != self._seq + 1:
                log.warning("state store: missed changes %d..%d; resynchronising", self._seq, seq)
                self._seq = seq
                self._resync = True
                return
        self._seq = seq
        change = parse_change(body)
        if change is None or change.origin == self.instance_id or change.kind not in self._known:
            return
        known = self._known[change.kind]
        known.update(change.entries)
        for k in change.deleted:
            known.pop(k, None)
        if self.on_change is not None:
            await self.on_change(change.kind, change.entries, change.deleted)
        lag = max(0.0, time.time() - float(change.at or time.time()))
        self.propagation_s.append(lag)
        self.propagation.observe(lag)
