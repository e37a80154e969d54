"""Tail-latency tries of one exchange: the per-try timeout and hedged (backup) requests.

Both apply only to a request that may be sent twice (idempotent or ``Idempotency-Key``,
body buffered within ``retries.buffer_body_max``) once its whole request is written and
it waits for response headers; nothing here allocates unless one of them is configured.

- ``timeouts.per_try``: a try with no response headers after this long is abandoned and
  the request retried elsewhere (within ``max_retries`` and the retry budget; when no
  retry is allowed the try keeps waiting, bounded by ``timeouts.response_headers``).
- ``hedging``: after ``delay`` (auto: the region's current p95 estimate) without headers,
  one more copy goes to a region not tried yet, up to ``max_extra`` copies, while the
  hedges in flight stay under ``budget_percent`` of the requests in flight. The first
  response to start wins; every other try is closed (its bytes never reach the client).
  A try that fails while a hedge is still waiting hands the request to that hedge
  instead of retrying. Outcomes: ``router_hedges_total{outcome=won|lost|cancelled|skipped_budget}``.
"""

from __future__ import annotations

import asyncio
from time import monotonic

from router.proxy.exchange import Exchange
from router.proxy.retries import may_retry, schedule_retry
from router.proxy.services import ExchangeServices, HedgeSet
from router.proxy.upstream import ResponseSink, UpstreamConnection
from router.routing.load import auto_hedge_delay
from router.routing.routes import current_plan
from router.state.snapshot import RegionView


def replayable(ex: Exchange) -> bool:
    """May this request be sent again (a retry, a hedge, a rescue)?"""
    return (
        ex.idempotent and not ex.upgrade and (ex.retry_buffer is not None or ex.body_done_empty())
    )


def arm(ex: Exchange, since: float) -> None:
    """The current try waits for headers (sent at ``since``): start its tail timers."""
    core = ex.core
    conn = ex.upstream
    if conn is None or not replayable(ex):
        return
    now = monotonic()
    if core.per_try_s:
        wait = max(0.0, since + core.per_try_s - now)
        ex.try_timer = core.loop.call_later(wait, per_try_due, ex, conn)
    if core.hedging is not None:
        hedges = hedges_of(ex)
        if hedges is None:
            hedges = Hedges(ex)
            ex.hedges = hedges
        if hedges.sent < core.hedging.max_extra and hedges.timer is None:
            wait = max(0.0, since + hedge_delay(ex) - now)
            hedges.timer = core.loop.call_later(wait, hedge_due, hedges)


def hedges_of(ex: Exchange) -> Hedges | None:
    """``ex.hedges`` as this module made it (the exchange sees only a ``HedgeSet``)."""
    hedges = ex.hedges
    assert hedges is None or isinstance(hedges, Hedges)
    return hedges


def hedge_delay(ex: Exchange) -> float:
    """``hedging.delay``, or (auto) the chosen region's current p95 estimate."""
    core = ex.core
    assert core.hedging is not None and ex.region is not None
    if core.hedging.delay_s is not None:
        return core.hedging.delay_s
    load = core.loads.get(ex.region.id)
    return auto_hedge_delay(load, ex.region.probe_latency_s, monotonic())[0]


# -- per-try timeout -------------------------------------------------------------------


def per_try_due(ex: Exchange, conn: UpstreamConnection) -> None:
    ex.try_timer = None
    if ex.done or ex.resp_started or ex.discard_response or ex.upstream is not conn:
        return
    hedges = hedges_of(ex)
    waiting_hedge = hedges is not None and any(h.conn is not None for h in hedges.tries)
    if not waiting_hedge and not may_retry(ex, "timeout"):
        return  # keep waiting: timeouts.response_headers still bounds the request
    region = ex.region
    assert region is not None
    core = ex.core
    core.awaiting.discard(ex)
    ex.release_upstream(reuse=False)
    core.loads.get(region.id).observe_failure(monotonic())
    core.stats.upstream_error(region.id, "per_try_timeout")
    ex.tried.add(region.id)
    if hedges is None or not hedges.hand_over("per_try_timeout"):
        schedule_retry(ex, "per_try_timeout")
    # Last: an ejection it causes rescues what still waits on the region, not this request.
    core.observer(region.id, False, "timeout")


# -- hedges ----------------------------------------------------------------------------


class Hedges(HedgeSet):
    """The hedging state of one exchange, allocated only when hedging is on."""

    __slots__ = ("ex", "sent", "skipped", "timer", "tries")

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.tries: list[HedgeTry] = []
        self.sent = 0
        self.timer: asyncio.TimerHandle | None = None
        self.skipped = False

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def end_all(self, outcome: str, keep: HedgeTry | None = None) -> None:
        for h in list(self.tries):
            if h is not keep:
                h.end(outcome)

    def hand_over(self, reason: str) -> bool:
        """The current try failed: a hedge still waiting takes the request over (no retry).

        Only a copy already written to a region still in rotation qualifies. On True the
        failed try is closed (if the caller has not released it yet).
        """
        ex = self.ex
        by_id = ex.core.holder.current.by_id
        ready = [
            h
            for h in self.tries
            if h.conn is not None and not h.done and (r := by_id.get(h.region.id)) and r.eligible
        ]
        if not ready:
            return False
        h = ready[0]
        core = ex.core
        core.stats.retry(reason)
        if ex.region is not None:
            ex.tried.add(ex.region.id)
        adopt(ex, h, won=False)
        core.awaiting.add(ex)
        ex.status = 0
        arm(ex, h.sent_at)
        return True


def hedge_due(hedges: Hedges) -> None:
    hedges.timer = None
    ex = hedges.ex
    core = ex.core
    cfg = core.hedging
    if ex.done or ex.resp_started or ex.discard_response or ex.upstream is None or cfg is None:
        return
    if hedges.sent >= cfg.max_extra:
        return
    budget = max(1.0, core.hedge_budget_fraction * core.inflight)
    if core.hedges_active >= budget:
        if not hedges.skipped:
            hedges.skipped = True
            core.stats.hedge("skipped_budget")
        core.hedge_waiting.append(ex)  # first in line when a hedge ends (_budget_freed)
        return
    assert ex.region is not None
    avoid = set(ex.tried)
    avoid.add(ex.region.id)
    avoid.update(h.region.id for h in hedges.tries)
    current = core.holder.current
    plan = ex.plan if current is ex.snapshot else current_plan(ex.snapshot, current, ex.plan)
    region = core.selector.choose(current, plan, ex.info, monotonic(), avoid)
    if region is None or region.id in avoid:
        return  # nowhere else to send a copy
    hedges.sent += 1
    HedgeTry(hedges, region).start()
    if hedges.sent < cfg.max_extra:
        hedges.timer = core.loop.call_later(hedge_delay(ex), hedge_due, hedges)


def _budget_freed(core: ExchangeServices[Exchange]) -> None:
    """A hedge ended: the request that has waited longest for the budget goes next."""
    waiting = core.hedge_waiting
    while waiting:
        ex = waiting.popleft()
        hedges = hedges_of(ex)
        if hedges is not None and not (ex.done or ex.resp_started or ex.upstream is None):
            core.loop.call_soon(hedge_due, hedges)
            return


class HedgeTry(ResponseSink):
    """One extra copy of a request, bound to its own upstream connection until it wins."""

    __slots__ = ("conn", "connect_task", "done", "ex", "hedges", "region", "sent_at")

    def __init__(self, hedges: Hedges, region: RegionView) -> None:
        self.hedges = hedges
        self.ex = ex = hedges.ex
        self.client = ex.client  # the upstream connection corks it
        self.region = region
        self.conn: UpstreamConnection | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.resp_reason = b""
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.head_only_done = False
        self.relay_length = 0  # a hedge never relays a body itself: it hands over first
        self.sent_at = 0.0
        self.done = False

    def __repr__(self) -> str:
        return f"<HedgeTry region={self.region.id} done={self.done}>"

    def start(self) -> None:
        core = self.ex.core
        self.hedges.tries.append(self)
        core.hedges_active += 1
        core.loads.get(self.region.id).inflight += 1
        conn = core.pool.acquire_idle(self.region.endpoint)
        if conn is not None:
            self._bind(conn)
        else:
            self.connect_task = core.loop.create_task(self._connect())

    async def _connect(self) -> None:
        core = self.ex.core
        try:
            conn = await core.open_connection(self.region)
        except (TimeoutError, OSError):
            self.connect_task = None
            self.failed("connect-failure")
            return
        self.connect_task = None
        if self.done:
            core.pool.release(conn, monotonic())
            return
        if not conn.usable():
            conn.abort()
            self.failed("connect-failure")
            return
        self._bind(conn)

    def _bind(self, conn: UpstreamConnection) -> None:
        ex = self.ex
        self.conn = conn
        conn.exchange = self
        parts = ex.head_parts(self.region)
        ex.add_body(parts, ex.retry_buffer or (), complete=True)  # hedged bodies are whole
        self.sent_at = monotonic()
        conn.write(b"".join(parts))

    # -- events from the upstream connection -------------------------------------------

    def on_response_head(self, status: int) -> None:
        ex = self.ex
        if 100 <= status < 200 and status != 101:
            self.resp_headers = []  # 100/103: the final response follows
            return
        if status == 101 or ex.core.retry.retries_status(status):
            self.failed(str(status))
            return
        if ex.done or ex.resp_started:
            self.end("lost")
            return
        adopt(ex, self, won=True)
        ex.on_response_head(status)

    def on_response_body(self, data: bytes) -> None:
        return None  # only after a head, which either adopted or ended this try

    def on_response_raw(self, data: bytes, start: int) -> None:
        return None  # the same

    def on_response_complete(self) -> None:
        return None

    def on_response_trailer(self, name: bytes, value: bytes) -> None:
        return None  # trailers follow a head, which either adopted or ended this try

    def on_upgrade_data(self, rest: bytes) -> None:
        self.failed("protocol")

    def on_upstream_protocol_error(self, message: str) -> None:
        self.failed("protocol")

    def on_upstream_lost(self, conn: UpstreamConnection, exc: Exception | None) -> None:
        if conn is self.conn:
            self.conn = None
            self.failed("reset")

    # -- endings -----------------------------------------------------------------------

    def failed(self, kind: str) -> None:
        """The copy failed: its region hears of it; the request goes on without it."""
        if self.done:
            return
        core = self.ex.core
        now = monotonic()
        core.loads.get(self.region.id).observe_failure(now)
        core.stats.upstream_error(self.region.id, kind)
        self.ex.tried.add(self.region.id)
        self.end("cancelled")
        # Last: the observer may eject the region, and an ejection rescues requests at once
        # (router/proxy/rescue.py), which must not find this copy still waiting.
        core.observer(self.region.id, False, kind)

    def end(self, outcome: str) -> None:
        """Close this copy without its answer reaching the client."""
        if self.done:
            return
        self.done = True
        ex = self.ex
        core = ex.core
        core.stats.hedge(outcome)
        core.hedges_active -= 1
        _budget_freed(core)
        core.loads.get(self.region.id).inflight -= 1
        if self in self.hedges.tries:
            self.hedges.tries.remove(self)
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.exchange = None
            conn.abort()  # mid-response: closing is the only clean cancel
            self.client.resume_reading_for("upstream")  # if this copy's writes paused it


def adopt(ex: Exchange, h: HedgeTry, *, won: bool) -> None:
    """``h`` becomes the exchange's try and the current one is closed (never spliced).

    ``won``: ``h``'s response has started, so every other copy has lost.
    """
    assert h.conn is not None
    core = ex.core
    loser: str | None = None
    if won and ex.upstream is not None and ex.region is not None and ex in core.awaiting:
        # The try that lost is still unanswered: that is a latency sample of its region
        # (or a region that answers nothing keeps looking as fast as its last answer), and
        # for outlier detection a timed-out try, as Envoy counts a per-try timeout when it
        # hedges: a region that loses every race is ejected after consecutive_failures.
        now = monotonic()
        core.loads.get(ex.region.id).observe_outstanding(now - ex.sent_at, now)
        loser = ex.region.id
    core.awaiting.discard(ex)
    ex.release_upstream(reuse=False)
    ex.cancel_connect()
    ex.discard_response = False  # a 5xx being read to be retried: dropped with its try
    ex.head_only_done = False
    if won:
        h.hedges.end_all("lost", keep=h)
    h.done = True
    core.hedges_active -= 1
    _budget_freed(core)
    h.hedges.tries.remove(h)
    core.stats.hedge("won")
    conn = h.conn
    h.conn = None
    ex.region = h.region
    ex.load = core.loads.get(h.region.id)  # what release_upstream will count down
    ex.upstream = conn
    conn.exchange = ex
    ex.counted = True  # the hedge's in-flight count on its region is now the exchange's
    core.inflight += 1
    ex.attempts += 1
    ex.resp_reason = h.resp_reason
    ex.resp_headers = h.resp_headers
    ex.sent_at = h.sent_at
    if not ex.deadline:  # the request's own headers deadline stands; a hedge does not extend it
        ex.deadline = h.sent_at + core.response_headers_timeout_s
    if ex.client.writing_paused and conn.transport is not None:
        conn.transport.pause_reading()
    if loser is not None:
        # Last, with the exchange on its new try: an ejection rescues the requests still
        # waiting on the loser's region, and this one must not be among them.
        core.observer(loser, False, "hedge_lost")
