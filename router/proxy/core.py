"""The data plane's shared core: what every client connection of one process reads.

``ProxyCore`` is the exchanges' ``ExchangeServices`` (router/proxy/services.py: snapshot
holder, selector, pools, counters, per-config settings) plus what the client side needs: it
routes a request to its plan, sweeps timeouts without a timer per request, rescues requests
when a region leaves, and answers the exchange's hooks with the retry and hedging modules.
The per-connection protocol is ``router.proxy.client.ClientConnection``; one request is a
``router.proxy.exchange.Exchange``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING

from router.config.loader import Config
from router.proxy import hedging, retries
from router.proxy.exchange import Exchange
from router.proxy.headers import KNOWN_METHODS, REQUEST_SPECIAL
from router.proxy.rescue import rescue_departed
from router.proxy.services import ExchangeServices, Observer, no_observer
from router.proxy.upstream import UpstreamConnection
from router.routing.load import LoadTable
from router.routing.routes import match_plan
from router.routing.strategies import RequestInfo
from router.state.snapshot import RoutePlan, Snapshot, SnapshotHolder

if TYPE_CHECKING:
    from router.proxy.interfaces import ClientConnectionLike

AccessLog = Callable[[Exchange, int, float, bool, str | None], None]


class ProxyCore(ExchangeServices[Exchange]):
    """Shared by every client connection of one process."""

    def __init__(
        self,
        holder: SnapshotHolder,
        *,
        loop: asyncio.AbstractEventLoop,
        loads: LoadTable,
        observer: Observer = no_observer,
        access_log: AccessLog | None = None,
    ) -> None:
        """``loads`` is the process's load table, owned by its runtime (or worker): the
        proxy core updates it on every request; strategies, views and drains read it."""
        self.connections: set[ClientConnectionLike] = set()  # HTTP/1.1 and HTTP/2
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(6).hex().encode()
        self._method_labels: dict[bytes, str] = {}
        # Called after each new config is applied (the TLS listener re-reads certificates).
        self.config_hooks: list[Callable[[Config], None]] = []
        super().__init__(holder, loop=loop, loads=loads, observer=observer, access_log=access_log)

    def apply_config(self, cfg: Config) -> None:
        """Settings read per request, decided once per config."""
        super().apply_config(cfg)
        self.max_header_bytes = cfg.limits.max_header_bytes
        self.preserve_host = cfg.preserve_host
        self.idle_timeout_s = cfg.timeouts.idle_s
        aff = cfg.affinity
        self.affinity_header = aff.header.lower().encode() if aff and aff.header else None
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

    # -- the exchange's hooks: retries and hedging sit above it -------------------------

    def attempt_failed(
        self,
        ex: Exchange,
        kind: str,
        *,
        sent: bool,
        stale: bool = False,
        detail: str = "",
        final: bool = False,
    ) -> None:
        retries.attempt_failed(ex, kind, sent=sent, stale=stale, detail=detail, final=final)

    def retry_after_status(self, ex: Exchange, conn: UpstreamConnection | None) -> None:
        retries.retry_after_status(ex, conn)

    def may_retry(self, ex: Exchange, reason: str) -> bool:
        return retries.may_retry(ex, reason)

    def arm_tail(self, ex: Exchange, since: float) -> None:
        hedging.arm(ex, since)

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
