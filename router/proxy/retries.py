"""Retry policy of one exchange: what failed, whether to try again, where and when.

The failure half of ``router.proxy.exchange.Exchange``, kept apart from the per-request fast
path: nothing here runs unless an attempt failed or a region answered with a retryable status.
This module sits above the exchange; the exchange reaches it through its services' hooks
(``ExchangeServices.attempt_failed``, ``retry_after_status``, ``may_retry``), which
``ProxyCore`` implements with these functions.
Retries go to a region not tried yet while one is eligible, with full-jitter backoff, within
the retry budget (retries that re-send what no region saw are outside it). A request that
never reached a region is always retried (its body is still pending); otherwise only
idempotent ones (or with ``Idempotency-Key``) whose body fit ``retries.buffer_body_max``;
a retry skipped for its body size or the budget is counted, never silent.
"""

from __future__ import annotations

from time import monotonic

from router.errors import ProxyError, UpstreamConnectError, UpstreamTimeout
from router.proxy.exchange import Exchange
from router.proxy.retry_policy import condition_of
from router.proxy.upstream import UpstreamConnection
from router.routing.routes import current_plan


def may_retry(ex: Exchange, reason: str, *, unsent: bool = False, budgeted: bool = True) -> bool:
    """``unsent``: no byte reached a region, so ``pending`` still holds the whole body.

    ``budgeted``: the retry adds load (the failed try may have been served), so the retry
    budget applies; a try on a connection that was dead before it was written adds none.
    """
    core = ex.core
    policy = core.retry
    if not policy.has_attempts_left(ex.attempts):
        return False
    if not policy.safe_to_resend(ex.idempotent, reason):
        return False
    if not unsent and ex.retry_buffer is None and not ex.body_done_empty():
        if ex.body_too_large_for_retry:
            core.stats.retry("skipped_body_too_large")
        return False
    if unsent or not budgeted:
        return True  # re-sending what no region saw adds no load: outside the budget
    if not policy.budget_allows(core.retries_active, core.inflight):
        core.stats.retry("skipped_budget")
        return False
    return True


def attempt_failed(
    ex: Exchange,
    kind: str,
    *,
    sent: bool,
    stale: bool = False,
    detail: str = "",
    final: bool = False,
) -> None:
    """``final``: the request's own deadline passed, so no retry (nor hedge) may follow."""
    core = ex.core
    core.awaiting.discard(ex)
    region = ex.region
    assert region is not None
    now = monotonic()
    ex.release_upstream(reuse=False)
    if not stale:
        core.loads.get(region.id).observe_failure(now)
        core.stats.upstream_error(region.id, kind)
        core.observer(region.id, False, kind)
    elif region.id not in ex.tried:
        # A pooled connection the region had already closed: the try never counted, so
        # it spends none of the request's retries (once per region, which bounds it).
        ex.attempts -= 1
    # Even a stale reset may mean the region just died: retry elsewhere while one is
    # eligible, or a dead region still in rotation takes the retry and refuses it.
    ex.tried.add(region.id)
    if ex.hedges is not None and not final and kind != "timeout" and ex.hedges.hand_over(kind):
        return  # a copy of the request is already waiting elsewhere
    reason = None if final else core.retry.failure_reason(kind, sent=sent, stale=stale)
    if reason is not None and may_retry(ex, reason, unsent=not sent, budgeted=not stale):
        counted_as = "stale-connection" if stale else condition_of(kind)
        schedule_retry(ex, counted_as, budgeted=sent and not stale)
        return
    error: ProxyError
    if kind == "timeout":
        error = UpstreamTimeout(f"region {region.id} did not answer in time")
    elif kind == "connect-timeout":
        # The region could not be reached at all: that is a 502, like a refusal.
        error = UpstreamConnectError(f"region {region.id}: connect timed out")
    else:
        error = UpstreamConnectError(detail or f"region {region.id} failed: {kind}")
    ex.fail(error)


def retry_after_status(ex: Exchange, conn: UpstreamConnection | None) -> None:
    # The discarded 5xx was read in full; its connection may be reused.
    ex.discard_response = False
    reusable = conn is not None and ex.body_done and conn.parser.should_keep_alive()
    if conn is not None and ex.head_only_done:
        conn.reset_parser()
        ex.head_only_done = False
    ex.release_upstream(reuse=reusable)
    assert ex.region is not None
    ex.core.stats.upstream_error(ex.region.id, str(ex.status))
    ex.tried.add(ex.region.id)
    if ex.hedges is not None and ex.hedges.hand_over(str(ex.status)):
        return
    schedule_retry(ex, str(ex.status))


def schedule_retry(ex: Exchange, reason: str, *, budgeted: bool = True) -> None:
    """``budgeted``: the retry counts against the budget (it re-sends what a region saw)."""
    core = ex.core
    core.stats.retry(reason)
    ex.rewind()
    if budgeted and not ex.retrying:
        ex.retrying = True
        core.retries_active += 1
    delay = core.selector.rng.uniform(0, core.retry.backoff_cap_s(ex.attempts))  # full jitter
    core.loop.call_later(delay, retry_now, ex)


def retry_now(ex: Exchange) -> None:
    """A scheduled retry's (or a rescue's) time has come: try again.

    It chooses from the routing state of now, not of when the request arrived: a
    region ejected or failed over in between must not get the retry.
    """
    if ex.done or ex.upstream is not None or ex.connect_task is not None:
        return  # finished, or already on another try (a hedge took it over, a rescue)
    current = ex.core.holder.current
    if current is not ex.snapshot:
        ex.plan = current_plan(ex.snapshot, current, ex.plan)
        ex.snapshot = current
    ex.start()
