"""The dashboard's data (GET /admin/dashboard.json, compat ``global-dashboard``), one read.

Everything comes from in-memory state (snapshot, traffic window, operations, alerts,
replication jobs), so polling it every second costs little. Charts get one point per
window sample (1 s) over ``SERIES_S``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from admin.views import (
    last_check_json,
    latency_json,
    ms,
    operation_json,
    region_head,
    transition_json,
)
from router import __version__
from router.control.core import Control

SERIES_S = 300.0  # chart span
TRAFFIC_WINDOW_S = 60.0  # rps, error rate, percentiles and share over this
TRANSITIONS_SHOWN = 30
JOBS_SHOWN = 20


def dashboard_json(control: Control) -> dict[str, Any]:
    runtime = control.runtime
    snap = control.registry.snapshot()
    mono, wall = time.monotonic(), time.time()
    traffic = {r.id: control.window.region(r.id, TRAFFIC_WINDOW_S) for r in snap.regions}
    total_rps = sum(t.rps for t in traffic.values())
    total_requests = sum(t.requests for t in traffic.values())
    total_errors = sum(t.errors for t in traffic.values())
    tier_share = {t.priority: t.share for t in snap.default_plan.tiers}
    regions = []
    for r in snap.regions:
        t = traffic[r.id]
        load = runtime.loads.get(r.id)
        last = runtime.health.last_results.get(r.id)
        series = control.window.series(r.id, SERIES_S)
        regions.append(
            {
                **region_head(r),
                "tier": r.priority,
                "weight": r.weight,
                "effective_weight": round(r.effective_weight, 3),
                "tier_share": round(tier_share.get(r.priority, 0.0), 4),
                "traffic_share": round(t.requests / total_requests, 4) if total_requests else 0.0,
                "rps": round(t.rps, 3),
                "requests": t.requests,
                "errors": t.errors,
                "error_rate": round(t.error_rate, 4),
                "latency_ms": latency_json(t),
                "inflight": load.inflight,
                "last_check": last_check_json(last, detail=False),
                # [wall time, rps, p95 ms] per sample; times from the monotonic samples
                "series": [
                    [round(wall - (mono - at), 3), round(rps, 3), ms(p95)]
                    for at, rps, p95 in series
                ],
            }
        )
    history = list(control.registry.history)[-TRANSITIONS_SHOWN:]
    return {
        "generated_at": wall,
        "version": __version__,
        "instance_id": runtime.instance_id,
        "uptime_s": round(wall - runtime.started_wall, 3),
        "strategy": snap.config.strategy,
        "config_hash": snap.config.config_hash,
        "panic": snap.panic,
        "ready": runtime.ready(),
        "window_s": TRAFFIC_WINDOW_S,
        "totals": {
            "rps": round(total_rps, 3),
            "requests": total_requests,
            "errors": total_errors,
            "error_rate": round(total_errors / total_requests, 4) if total_requests else 0.0,
        },
        "regions": regions,
        "operations": [operation_json(op) for op in control.ops.active.values()],
        "alerts": control.alerts.firing_json(),
        "transitions": [transition_json(t) for t in reversed(history)],
        "replication": replication_jobs(control),
    }


def replication_jobs(control: Control) -> dict[str, Any]:
    """Recent replication jobs, newest first, when the replication engine is wired in.

    Optional on purpose: read through ``control.replication`` (its ``jobs``: a mapping or
    an iterable of jobs with ``to_json()``), so the dashboard works with or without it.
    """
    engine = getattr(control, "replication", None)
    if engine is None:
        return {"available": False, "jobs": []}
    jobs: Any = getattr(engine, "jobs", ())
    if callable(jobs):
        jobs = jobs()
    if isinstance(jobs, Mapping):
        jobs = jobs.values()
    out: list[dict[str, Any]] = []
    for job in jobs if isinstance(jobs, Iterable) else ():
        data = job.to_json() if hasattr(job, "to_json") else job
        if isinstance(data, dict):
            out.append(data)
    out.sort(key=lambda j: float(j.get("created_at") or 0.0), reverse=True)
    return {"available": True, "jobs": out[:JOBS_SHOWN]}
