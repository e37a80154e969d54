"""JSON views of regions, operations and transitions, shared by the admin routes and the
dashboard."""

from __future__ import annotations

import time
from typing import Any

from router.config.loader import to_plain
from router.control.core import Control
from router.health.checker import ProbeResult
from router.monitoring.window import RegionTraffic
from router.state.operations import FailoverOperation
from router.state.registry import Transition
from router.state.snapshot import RegionView


def ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds for JSON (3 decimals); None stays None."""
    return None if seconds is None else round(seconds * 1000.0, 3)


def region_head(r: RegionView) -> dict[str, Any]:
    """The fields every region object of the admin API and the dashboard has."""
    return {
        "id": r.id,
        "name": r.name,
        "endpoint": r.endpoint.url,
        "state": r.state.value,
        "eligible": r.eligible,
    }


def latency_json(traffic: RegionTraffic) -> dict[str, float | None]:
    return {"p50": ms(traffic.p50_s), "p95": ms(traffic.p95_s), "p99": ms(traffic.p99_s)}


def last_check_json(
    last: tuple[float, ProbeResult] | None, *, detail: bool = True
) -> dict[str, Any] | None:
    """A region's last probe (wall time, result); ``detail`` adds status and latency."""
    if last is None:
        return None
    at, result = last
    out: dict[str, Any] = {"at": at, "ok": result.ok, "error": result.error or None}
    if detail:
        out["status"] = result.status or None
        out["latency_ms"] = ms(result.latency_s)
    return out


def region_json(control: Control, r: RegionView, *, detail: bool = True) -> dict[str, Any]:
    runtime = control.runtime
    rec = control.registry.record(r.id)
    out: dict[str, Any] = {
        **region_head(r),
        "weight": r.weight,
        "priority": r.priority,
        "labels": dict(r.labels),
        "source": r.source,
    }
    if rec.overrides:
        out["overrides"] = to_plain(rec.overrides)
    if not detail:
        return out
    load = runtime.loads.get(r.id)
    traffic = control.window.region(r.id)
    last = runtime.health.last_results.get(r.id)
    op = control.ops.active.get(r.id)
    out.update(
        {
            "effective_weight": round(r.effective_weight, 3),
            "max_inflight": r.max_inflight,
            "latency_estimate_ms": ms(load.latency_estimate(r.probe_latency_s, time.monotonic())),
            "probe_latency_ms": ms(r.probe_latency_s),
            "latency_ms": latency_json(traffic),
            "inflight": load.inflight,
            "rps": round(traffic.rps, 3),
            "error_rate": round(traffic.error_rate, 4),
            "requests_last_minute": traffic.requests,
            "last_check": last_check_json(last),
            "times_ejected": rec.times_ejected,
            "ejected_for_s": (
                round(rec.ejected_until - time.monotonic(), 3) if rec.ejected_until else None
            ),
            "failover_operation": op.to_json() if op is not None else None,
            "artifacts": [f"{name}@{digest}" for name, digest in sorted(r.artifacts.items())],
            # The endpoint name's addresses; "stale": true while lookups fail.
            "dns": runtime.core.dns.status(r.endpoint.host),
        }
    )
    if r.metrics_path:
        out["metrics_path"] = r.metrics_path
    return out


def transition_json(t: Transition) -> dict[str, Any]:
    out: dict[str, Any] = {
        "at": t.at,
        "region": t.region,
        "from": t.from_state.value,
        "to": t.to_state.value,
        "reason": t.reason,
    }
    if t.instance:
        out["instance"] = t.instance  # seen by another instance (shared history)
    return out


def operation_json(op: FailoverOperation) -> dict[str, Any]:
    return op.to_json()
