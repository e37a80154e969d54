"""What every exchange of one process is served by: shared state, settings, and the decisions
it asks for when a try fails.

``ExchangeServices`` holds the snapshot holder, selector, load table, pools, counters, the
exchanges waiting for response headers, and the settings decided once per config that an
exchange reads per request. ``router.proxy.core.ProxyCore`` extends it (request routing,
the sweeper, client connections) and implements its hooks with the retry and hedging
modules, which sit above the exchange. ``HedgeSet`` is the exchange's view of its hedges
(``router.proxy.hedging.Hedges``).

Base classes, not Protocols: this module sits below the exchange, and compiled, a native
base keeps the exchange's many reads of these fields struct reads (docs/architecture.md).
Generic in the exchange type ``E`` so the waiting sets hold exchanges without naming them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from router.config.loader import Config
from router.config.model import HedgingConfig
from router.proxy.batching import WriteBatch
from router.proxy.dns import Resolver
from router.proxy.h2upstream import H2Pool
from router.proxy.headers import RESPONSE_SPECIAL, name_lengths
from router.proxy.pool import Pool
from router.proxy.retry_policy import RetryPolicy
from router.proxy.upstream import UpstreamConnection
from router.routing.load import LoadTable
from router.routing.strategies import Selector
from router.state.snapshot import RegionView, SnapshotHolder
from router.traffic import TrafficStats

E = TypeVar("E")
Observer = Callable[[str, bool, str], None]  # (region id, ok, failure kind)


def no_observer(region_id: str, ok: bool, kind: str) -> None:
    """The default outcome observer: nobody listens (tests, benchmarks)."""
    return None


class HedgeSet:
    """An exchange's hedged copies and their timer, allocated only when hedging is on.

    The exchange calls down to them through these methods (implemented by
    ``router.proxy.hedging.Hedges``); everything else about hedging lives there.
    """

    __slots__ = ()

    def disarm(self) -> None:
        """The current try ends: stop the timer that would send the next copy."""
        raise NotImplementedError

    def end_all(self, outcome: str) -> None:
        """Close every copy still open (``lost``: the current try's answer won)."""
        raise NotImplementedError

    def hand_over(self, reason: str) -> bool:
        """The current try failed: a copy still waiting takes the request over."""
        raise NotImplementedError


class ExchangeServices(Generic[E]):
    """Shared by every exchange of one process; ``E`` is the exchange type."""

    def __init__(
        self,
        holder: SnapshotHolder,
        *,
        loop: asyncio.AbstractEventLoop,
        loads: LoadTable,
        observer: Observer = no_observer,
        access_log: Callable[[E, int, float, bool, str | None], None] | None = None,
    ) -> None:
        """``loads`` is the process's load table, owned by its runtime (or worker): the
        proxy updates it on every request; strategies, views and drains read it."""
        self.holder = holder
        self.loop = loop
        self.writes = WriteBatch(loop)  # small writes held to the end of the loop's pass
        self.loads = loads
        self.selector = Selector(self.loads)
        self.stats = TrafficStats()
        self.observer = observer
        self.access_log = access_log
        self.awaiting: set[E] = set()  # exchanges waiting for response headers
        self.inflight = 0
        self.retries_active = 0
        self.hedges_active = 0
        self.hedge_waiting: deque[E] = deque()  # requests waiting for the hedge budget
        self.draining = False
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
        """Settings an exchange reads per request, decided once per config."""
        self.config = cfg
        self.max_body_bytes = cfg.limits.max_body_bytes
        self.region_header = cfg.response_headers.region
        self.request_id_header = cfg.response_headers.request_id
        # The router's own response headers replace any the region sent.
        self.response_drop = (
            RESPONSE_SPECIAL
            | ({b"x-router-region"} if self.region_header else set())
            | ({b"x-request-id"} if self.request_id_header else set())
        )
        self.response_drop_lengths = name_lengths(self.response_drop)
        self.response_headers_timeout_s = cfg.timeouts.response_headers_s
        self.retry = RetryPolicy.from_config(cfg.retries)
        self.per_try_s = cfg.timeouts.per_try_s
        self.hedging: HedgingConfig | None = cfg.hedging if cfg.hedging.enabled else None
        self.hedge_auto = self.hedging is not None and self.hedging.delay_s is None
        self.hedge_budget_fraction = cfg.hedging.budget_percent / 100.0
        self.tail_timers = bool(self.per_try_s) or self.hedging is not None
        self.writes.poll.configure(cfg.busy_poll_s)
        self.pool.connect_timeout_s = cfg.timeouts.connect_s
        self.pool.idle_timeout_s = cfg.timeouts.idle_s
        self.pool.max_age_s = cfg.dns.max_connection_age_s
        self.dns.apply_config(cfg.dns)
        aff = cfg.affinity
        self.affinity_cookie = aff.cookie.encode() if aff and aff.cookie else None
        self._cookie_suffix = (
            b"; Max-Age=%d" % int(aff.cookie_max_age_s) if aff and aff.cookie_max_age_s else b""
        )

    async def open_connection(self, region: RegionView) -> UpstreamConnection:
        """A new connection to the region: a stream of its HTTP/2 connection for
        ``protocol: h2``, else a pooled HTTP/1.1 connection (retries and hedges alike)."""
        pool = self.h2_pool if region.protocol == "h2" else self.pool
        return await pool.connect(region.endpoint, region.ca_file)

    def affinity_cookie_header(self, region_id: str) -> bytes:
        assert self.affinity_cookie is not None
        return b"Set-Cookie: %b=%b; Path=/; HttpOnly; SameSite=Lax%b\r\n" % (
            self.affinity_cookie,
            region_id.encode(),
            self._cookie_suffix,
        )

    # -- decisions an exchange asks for (router/proxy/retries.py, hedging.py) ------------

    def attempt_failed(
        self,
        ex: E,
        kind: str,
        *,
        sent: bool,
        stale: bool = False,
        detail: str = "",
        final: bool = False,
    ) -> None:
        """A try failed: hand the request to a hedge, retry it, or answer the error."""
        raise NotImplementedError

    def retry_after_status(self, ex: E, conn: UpstreamConnection | None) -> None:
        """A retryable status was read in full (and discarded): try again."""
        raise NotImplementedError

    def may_retry(self, ex: E, reason: str) -> bool:
        """May ``ex`` be tried again for ``reason`` (attempts, body, budget)?"""
        raise NotImplementedError

    def arm_tail(self, ex: E, since: float) -> None:
        """``ex`` waits for headers since ``since``: start its per-try and hedge timers."""
        raise NotImplementedError
