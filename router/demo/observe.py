"""What the demo reads from the router it runs: one ``Frame`` for the view, and the reason of
a region's latest state change for the event lines.

Reads only: the snapshot the proxy serves from, the load table, the proxy's counters, the
registry's history and what the demo's own clients saw.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
from collections.abc import Mapping, Reversible

from router.demo.regions import DemoRegion, TrafficGenerator
from router.demo.view import Frame, Row, Totals
from router.runtime import Runtime
from router.state.records import Transition
from router.state.snapshot import RegionState


def read_frame(
    runtime: Runtime,
    traffic: TrafficGenerator,
    regions: Mapping[str, DemoRegion],
    *,
    t_s: float,
    window_s: float,
    next_step: str | None,
    events: tuple[str, ...],
) -> Frame:
    """Everything the view shows at ``t_s`` (seconds since the traffic started), read once."""
    now = asyncio.get_running_loop().time()
    window = traffic.window(now)
    span_s = max(0.5, min(window_s, t_s))
    stats = runtime.core.stats
    errors: dict[str, int] = {}
    for (region_id, _kind), n in stats.upstream_errors.items():
        errors[region_id] = errors.get(region_id, 0) + n
    rows = []
    for r in runtime.holder.current.regions:
        latencies = [s.latency_s for s in window if s.region == r.id]
        demo_region = regions.get(r.id)
        estimate_s = runtime.loads.get(r.id).latency_estimate(r.probe_latency_s, now)
        rows.append(
            Row(
                id=r.id,
                state=r.state,
                share=len(latencies) / len(window) if window else 0.0,
                rps=len(latencies) / span_s,
                p50_ms=statistics.median(latencies) * 1000 if latencies else None,
                estimate_ms=estimate_s * 1000,
                upstream_errors=errors.get(r.id, 0),
                simulated=demo_region.profile.describe() if demo_region else "-",
                down=demo_region is not None and not demo_region.up,
            )
        )
    retries = sum(n for why, n in stats.retries.items() if not why.startswith("skipped"))
    totals = Totals(rps=len(window) / span_s, ok=traffic.ok, failed=traffic.failed, retries=retries)
    return Frame(t_s=t_s, rows=rows, totals=totals, next_step=next_step, events=events)


def change_reason(history: Reversible[Transition], region_id: str, state: RegionState) -> str:
    """`` (reason)`` of the region's latest change to ``state`` among the last 20, else ""."""
    for t in itertools.islice(reversed(history), 20):
        if t.region == region_id and t.to_state is state:
            reason = t.reason if len(t.reason) <= 60 else t.reason[:59] + "…"
            return f" ({reason})"
    return ""
