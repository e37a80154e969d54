"""In-flight rescue: requests waiting on a region that just left rotation go elsewhere at once.

A region leaves rotation by a probe verdict, an outlier ejection, a manual failover or a
drain. A request already sent there and still waiting for response headers would wait
until the region answers or ``timeouts.response_headers`` passes (a blackholed region
never answers). If the request may be repeated (idempotent or ``Idempotency-Key``, body
replayable), its try is abandoned and it is re-sent to another eligible region without
backoff: ``router_retries_total{reason="region_down"}``. A response that has started is
never touched. The rescue spends neither the request's retries nor the retry budget: the
abandoned try is closed, so the region set as a whole carries no extra request.
"""

from __future__ import annotations

from router.proxy.exchange import Exchange
from router.proxy.hedging import replayable
from router.proxy.retries import retry_now
from router.proxy.services import ExchangeServices
from router.routing.routes import current_plan
from router.state.snapshot import RoutePlan, Snapshot


def departed(old: Snapshot, new: Snapshot) -> frozenset[str]:
    """Ids of regions eligible in ``old`` that are not (or are gone) in ``new``."""
    out: set[str] = set()
    by_id = new.by_id
    for r in old.regions:
        if r.eligible:
            now = by_id.get(r.id)
            if now is None or not now.eligible:
                out.add(r.id)
    return frozenset(out)


def rescue_departed(core: ExchangeServices[Exchange], old: Snapshot, new: Snapshot) -> int:
    """Re-send every rescuable request waiting on a region that left; how many were."""
    if not core.awaiting or old is new:
        return 0
    gone = departed(old, new)
    if not gone:
        return 0
    waiting = [ex for ex in core.awaiting if ex.region is not None and ex.region.id in gone]
    return sum(1 for ex in waiting if rescue(ex, new))


def rescuable(ex: Exchange) -> bool:
    return not (ex.done or ex.resp_started or ex.discard_response) and replayable(ex)


def rescue(ex: Exchange, current: Snapshot) -> bool:
    region = ex.region
    if region is None or not rescuable(ex):
        return False
    if ex.hedges is not None and ex.hedges.hand_over("region_down"):
        return True  # a copy already waits on another region: it carries on alone
    plan = _plan_now(ex, current)
    avoid = ex.tried | {region.id}
    if not any(r.id not in avoid for tier in plan.tiers for r in tier.regions):
        # Nowhere else to go (the region did not just fail the request): keep waiting.
        return False
    core = ex.core
    core.awaiting.discard(ex)
    ex.release_upstream(reuse=False)  # closed: its late answer must never reach the client
    ex.tried.add(region.id)
    ex.attempts -= 1  # the region left; the request did not fail
    core.stats.retry("region_down")
    ex.rewind()
    core.loop.call_soon(retry_now, ex)
    return True


def _plan_now(ex: Exchange, current: Snapshot) -> RoutePlan:
    if current is ex.snapshot:
        return ex.plan
    return current_plan(ex.snapshot, current, ex.plan)
