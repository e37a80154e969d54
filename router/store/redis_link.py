"""The connection to Redis shared by the store and the cluster: one client, and whether it is up.

``RedisStateStore`` (router/store/redis.py) keeps the documents over it and
``Coordination`` (router/cluster/coordination.py) the health verdicts and leases; a failed
call from either marks the link down, so every write is refused at once
(``StoreWriteError``, 503 ``store_unavailable``) until the store's loop reconnects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from router.config.loader import redacted_url
from router.config.redis_url import SENTINEL_SCHEME, parse_sentinel_url
from router.metrics import GaugeCollector
from router.store.files import StoreWriteError

log = logging.getLogger("router.state")

SOCKET_TIMEOUT_S = 2.0


class RedisLink:
    """A Redis client under ``prefix``, its up/down state and the counters of its failures."""

    def __init__(self, url: str, prefix: str, client_name: str, metrics: CollectorRegistry) -> None:
        self.prefix = prefix
        self.url = redacted_url(url)
        self.client, self._sentinels = _client(url, client_name)
        self.connected = False
        self.down_since: float | None = time.time()
        self.last_error: str | None = None
        self.broken = asyncio.Event()  # set when a call fails: the store's loop reconnects
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
        metrics.register(
            GaugeCollector(
                "router_state_store_up",
                "1 while the shared state store is reachable",
                [],
                lambda: [([], 1.0 if self.connected else 0.0)],
            )
        )

    def pipeline(self, *, transaction: bool) -> Any:
        # Queued pipeline commands return the pipeline, typed as awaitables: use it untyped.
        return self.client.pipeline(transaction=transaction)

    def check_up(self) -> None:
        """Raise StoreWriteError at once while Redis is known to be unreachable."""
        if not self.connected:
            since = time.strftime("%H:%M:%S", time.localtime(self.down_since or time.time()))
            raise StoreWriteError(
                f"the shared state store ({self.url}) is unreachable since {since} "
                f"({self.last_error}); reconnecting, retry the change then"
            )

    def failed(self, op: str, exc: BaseException) -> StoreWriteError:
        """Count a failed call, mark the link down, and the error to raise."""
        self.mark_down(op, exc)
        return StoreWriteError(
            f"the shared state store ({self.url}) failed: {self.last_error}; "
            "reconnecting, retry the change then"
        )

    def mark_down(self, op: str, exc: BaseException) -> None:
        self.errors.labels(op).inc()
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.connected:
            log.warning(
                "state store %s unreachable (%s): routing on the last known state, admin "
                "writes refused until it is back",
                self.url,
                self.last_error,
            )
            self.connected = False
            self.down_since = time.time()
        self.broken.set()

    def mark_up(self) -> bool:
        """Connected again; True when it had been down."""
        was_down = not self.connected
        self.connected = True
        self.down_since = None
        return was_down

    async def close(self) -> None:
        await self.client.aclose()
        for sentinel_client in self._sentinels:  # the clients that ask the sentinels
            await sentinel_client.aclose()


def text(value: Any) -> str:
    """A Redis reply (bytes) as text."""
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
