"""The data plane's shared core: what every client connection of one process reads.

``ProxyCore`` holds the snapshot holder, selector, upstream pool, counters, the exchanges
waiting for response headers, and the settings decided once per config; it routes a request
to its plan and sweeps timeouts without a timer per request. The per-connection protocol
is ``router.proxy.client.ClientConnection``; one request is a ``router.proxy.exchange.Exchange``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING

from router.config.loader import Config
from router.metrics import TrafficStats
from router.proxy.dns import Resolver
from router.proxy.h2upstream import H2Pool
from router.proxy.headers import KNOWN_METHODS, REQUEST_SPECIAL, RESPONSE_SPECIAL
from router.proxy.rescue import rescue_departed
from router.proxy.retry_policy import RetryPolicy
from router.proxy.upstream import Pool, UpstreamConnection
from router.routing.load import LoadTable
from router.routing.routes import match_plan
from router.routing.strategies import RequestInfo, Selector
from router.state.snapshot import RegionView, RoutePlan, Snapshot, SnapshotHolder

if TYPE_CHECKING:
    from router.proxy.exchange import Exchange
    from router.proxy.interfaces import ClientConnectionLike

Observer = Callable[[str, bool, str], None]  # (region id, ok, failure kind)
AccessLog = Callable[["Exchange", int, float, bool, str | None], None]


def _ignore(region_id: str, ok: bool, kind: str) -> None:
    return None


class ProxyCore:
    """Shared by every client connection of one process."""

    def __init__(
        self,
        holder: SnapshotHolder,
        *,
        loop: asyncio.AbstractEventLoop,
        loads: LoadTable,
        observer: Observer = _ignore,
        access_log: AccessLog | None = None,
    ) -> None:
        """``loads`` is the process's load table, owned by its runtime (or worker): the
        proxy core updates it on every request; strategies, views and drains read it."""
        self.holder = holder
        self.loop = loop
        self.loads = loads
        self.selector = Selector(self.loads)
        self.stats = TrafficStats()
        self.observer = observer
        self.access_log = access_log
        self.connections: set[ClientConnectionLike] = set()  # HTTP/1.1 and HTTP/2
        self.awaiting: set[Exchange] = set()  # exchanges waiting for response headers
        self.inflight = 0
        self.retries_active = 0
        self.hedges_active = 0
        self.hedge_waiting: deque[Exchange] = deque()  # requests waiting for the hedge budget
        self.draining = False
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(6).hex().encode()
        self._method_labels: dict[bytes, str] = {}
        # Called after each new config is applied (the TLS listener re-reads certificates).
        self.config_hooks: list[Callable[[Config], None]] = []
        cfg = holder.current.config
        self.dns = Resolver(cfg.dns)
        self.pool = Pool(
            connect_timeout_s=cfg.timeouts.connect_s,
            idle_timeout_s=cfg.timeouts.idle_s,
            dns=self.dns,
            max_age_s=cfg.dns.max_connection_age_s,
        )
        self.h2_pool = H2Pool(self.pool)  # regions with protocol: h2
        self.apply_config(cfg)

    def apply_config(self, cfg: Config) -> None:
        """Settings read per request, decided once per config."""
        self.config = cfg
        self.max_header_bytes = cfg.limits.max_header_bytes
        self.max_body_bytes = cfg.limits.max_body_bytes
        self.preserve_host = cfg.preserve_host
        self.region_header = cfg.response_headers.region
        self.request_id_header = cfg.response_headers.request_id
        # The router's own response headers replace any the region sent.
        self.response_drop = (
            RESPONSE_SPECIAL
            | ({b"x-router-region"} if self.region_header else set())
            | ({b"x-request-id"} if self.request_id_header else set())
        )
        self.response_headers_timeout_s = cfg.timeouts.response_headers_s
        self.idle_timeout_s = cfg.timeouts.idle_s
        r = cfg.retries
        self.retry = RetryPolicy.from_config(r)
        self.per_try_s = cfg.timeouts.per_try_s
        self.hedging = cfg.hedging if cfg.hedging.enabled else None
        self.hedge_auto = self.hedging is not None and self.hedging.delay_s is None
        self.hedge_budget_fraction = cfg.hedging.budget_percent / 100.0
        self.tail_timers = bool(self.per_try_s) or self.hedging is not None
        self.pool.connect_timeout_s = cfg.timeouts.connect_s
        self.pool.idle_timeout_s = cfg.timeouts.idle_s
        self.pool.max_age_s = cfg.dns.max_connection_age_s
        self.dns.apply_config(cfg.dns)
        aff = cfg.affinity
        self.affinity_cookie = aff.cookie.encode() if aff and aff.cookie else None
        self.affinity_header = aff.header.lower().encode() if aff and aff.header else None
        self._cookie_suffix = (
            b"; Max-Age=%d" % int(aff.cookie_max_age_s) if aff and aff.cookie_max_age_s else b""
        )
        self.geo_header = (
            cfg.geo.header.lower().encode()
            if cfg.strategy == "geo" or any(rt.strategy == "geo" for rt in cfg.routes)
            else None
        )
        watch = {b"idempotency-key", b"cookie"}
        if self.affinity_header:
            watch.add(self.affinity_header)
        if self.geo_header:
            watch.add(self.geo_header)
        self.watched = frozenset(watch)
        self.interesting = REQUEST_SPECIAL | self.watched
        self.has_routes = bool(cfg.routes)
        self.routes_by_host = any(rt.match.host is not None for rt in cfg.routes)
        for hook in self.config_hooks:
            hook(cfg)

    async def open_connection(self, region: RegionView) -> UpstreamConnection:
        """A new connection to the region: a stream of its HTTP/2 connection for
        ``protocol: h2``, else a pooled HTTP/1.1 connection (retries and hedges alike)."""
        pool = self.h2_pool if region.protocol == "h2" else self.pool
        return await pool.connect(region.endpoint, region.ca_file)

    def next_request_id(self) -> bytes:
        return b"%b-%x" % (self._id_prefix, next(self._ids))

    def method_label(self, method: bytes) -> str:
        label = self._method_labels.get(method)
        if label is None:
            text = method.decode("latin-1")
            label = text if text in KNOWN_METHODS else "OTHER"
            if len(self._method_labels) < 64:
                self._method_labels[method] = label
        return label

    def affinity_cookie_header(self, region_id: str) -> bytes:
        assert self.affinity_cookie is not None
        return b"Set-Cookie: %b=%b; Path=/; HttpOnly; SameSite=Lax%b\r\n" % (
            self.affinity_cookie,
            region_id.encode(),
            self._cookie_suffix,
        )

    def plan_for(self, snapshot: Snapshot, host: bytes, path: str) -> RoutePlan:
        """The first route whose match fits this request (the same rule /admin/route explains)."""
        hostname = _hostname(host) if self.routes_by_host else ""  # only host routes read it
        return match_plan(snapshot, hostname, path)[1]

    def request_info(
        self, cookie: bytes | None, affinity_value: bytes | None, geo_value: bytes | None
    ) -> RequestInfo | None:
        """What the strategy may use beyond the plan: affinity and client geography."""
        affinity_region = None
        if self.affinity_cookie is not None and cookie is not None:
            affinity_region = _cookie_value(cookie, self.affinity_cookie)
        if affinity_region is None and affinity_value is None and geo_value is None:
            return None
        return RequestInfo(
            client_region=geo_value.decode("latin-1").strip().lower() if geo_value else None,
            affinity_region=affinity_region,
            affinity_key=affinity_value.decode("latin-1") if affinity_value else None,
        )

    def snapshot_changed(self, old: Snapshot, new: Snapshot) -> None:
        """A new routing state took over: rescue requests waiting on regions that left."""
        if self.awaiting:
            rescue_departed(self, old, new)

    def sweep(self) -> None:
        """Timeouts without a timer per request: response-header deadlines, idle clients."""
        now = monotonic()
        for ex in [e for e in self.awaiting if e.deadline <= now]:
            self.awaiting.discard(ex)
            ex.on_timeout()
        idle_limit = now - self.idle_timeout_s
        for conn in [c for c in self.connections if c.last_active < idle_limit]:
            conn.idle_timeout()
        self.pool.sweep(now)
        self.h2_pool.sweep(now)
        # Requests still waiting for headers are latency evidence before they answer.
        self.loads.observe_awaiting(self.awaiting)
        if self.hedge_auto:
            self.loads.refresh_p95(now)

    def __repr__(self) -> str:
        return (
            f"<ProxyCore connections={len(self.connections)} inflight={self.inflight} "
            f"{self.pool!r}>"
        )


def _hostname(host: bytes) -> str:
    """The Host header without its port, lower-case (``[::1]:80`` -> ``[::1]``)."""
    if host.startswith(b"["):
        end = host.find(b"]")
        name = host[: end + 1] if end != -1 else host
    else:
        name = host.split(b":", 1)[0]
    return name.decode("latin-1").lower()


def _cookie_value(header: bytes, name: bytes) -> str | None:
    for part in header.split(b";"):
        k, sep, v = part.strip().partition(b"=")
        if sep and k == name:
            return v.decode("latin-1")
    return None
