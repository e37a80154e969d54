"""The registry's snapshot, built from its records: region views, route plans, tiers and
panic. Pure: what the hot path reads is computed here once per change, never per request."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from router.config.loader import Config, RouteConfig
from router.state.artifacts import artifact_candidates
from router.state.records import RegionRecord
from router.state.snapshot import ArtifactInfo, RegionView, RoutePlan, Snapshot
from router.state.tiers import plan_tiers

# Weight share kept by a region this instance's own probes find down while the cluster's
# quorum finds it up: still in rotation, but others are preferred from this vantage point.
LOCAL_DOUBT_FACTOR = 0.1


def build_snapshot(
    version: int,
    cfg: Config,
    records: Iterable[RegionRecord],
    artifacts: Mapping[str, ArtifactInfo],
) -> Snapshot:
    views: list[RegionView] = []
    recs = tuple(records)  # read twice: views, then the next ejection end
    for i, rec in enumerate(recs):
        rc = rec.config
        ramp = max(0.1, rec.ramp) if rec.ramp_started_at is not None else 1.0
        if rec.quorum_up and rec.probed and not rec.probe_up:
            ramp *= LOCAL_DOUBT_FACTOR
        views.append(
            RegionView(
                index=i,
                id=rc.id,
                name=rc.name,
                endpoint=rc.endpoint,
                weight=rc.weight,
                priority=rc.priority,
                labels=rc.labels,
                max_inflight=rc.max_inflight,
                ca_file=rc.ca_file,
                protocol=rc.protocol,
                metrics_path=rc.metrics_path,
                source=rec.source,
                state=rec.state,
                effective_weight=rc.weight * ramp,
                probe_latency_s=rec.probe_latency_s,
                artifacts=MappingProxyType(dict(rec.artifacts)),
                failover_target=rec.failover_target,
            )
        )
    regions = tuple(views)
    by_id: Mapping[str, RegionView] = MappingProxyType({r.id: r for r in regions})
    catalog = MappingProxyType(dict(artifacts))
    default_plan = _plan(None, cfg.strategy, regions, cfg, catalog)
    route_plans = tuple(
        _plan(
            route,
            route.strategy or cfg.strategy,
            tuple(by_id[r] for r in route.regions if r in by_id) if route.regions else regions,
            cfg,
            catalog,
        )
        for route in cfg.routes
    )
    wake = [r.ejected_until for r in recs if r.ejected_until is not None]
    return Snapshot(
        version=version,
        config=cfg,
        regions=regions,
        by_id=by_id,
        default_plan=default_plan,
        route_plans=route_plans,
        panic=default_plan.panic,
        next_eligible_at=min(wake) if wake else None,
        artifacts=catalog,
    )


def _plan(
    route: RouteConfig | None,
    strategy: str,
    regions: tuple[RegionView, ...],
    cfg: Config,
    catalog: Mapping[str, ArtifactInfo],
) -> RoutePlan:
    artifact = None
    if route is not None and route.requires_artifact:
        # Only holders of a verified copy (or the fallback source) are candidates at all.
        artifact = artifact_candidates(route, regions, catalog)
        regions = artifact.regions
    tiers, panic = plan_tiers(
        regions, cfg.failover.overprovisioning_factor, cfg.failover.panic_threshold_percent
    )
    return RoutePlan(
        route=route,
        strategy=strategy,
        regions=regions,
        tiers=tiers,
        panic=panic,
        artifact_sha256=artifact.sha256 if artifact is not None else None,
        artifact_fallback=artifact.fallback if artifact is not None else None,
    )
