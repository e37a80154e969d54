"""Alert rules over the router's own state, pure: ``evaluate(facts, config)`` maps one
``Facts`` value (a registry snapshot, recent traffic per region, the last reload, recent
replication failures) to the conditions that hold now. No clock, no I/O; firing and
resolved alerts over successive evaluations are router/monitoring/alerts.py's.

Rules (names are the ``alertname`` label):

- ``RegionDown``: a region is ``unhealthy`` (active checks) or ``ejected`` (outliers).
- ``TierDown``: every counted region of a priority tier is out (counted as in tier
  planning: not operator-held, probed at least once, weight > 0).
- ``RouterPanic``: the default route fails open (every tier below ``panic_threshold``).
- ``RegionErrorRateHigh``: a region's 5xx share over ``alerts.window`` is above
  ``alerts.error_rate`` (with at least ``MIN_REQUESTS`` requests in the window).
- ``RegionLatencyHigh``: a region's p95 over ``alerts.window`` is above
  ``alerts.latency_p95`` (same minimum).
- ``ReplicationJobFailed``: the latest finished replication job of a (kind, name) failed;
  resolved by a later successful job of the same artifact, or after ``REPLICATION_HOLD_S``.
  Read from the replication engine's jobs (``control.replication``) when it is wired in.
- ``ConfigReloadFailed``: the last reload was rejected; resolved by a successful reload.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from router.config.loader import AlertsConfig
from router.monitoring.window import RegionTraffic
from router.state.snapshot import RegionState, Snapshot
from router.state.tiers import counts_for_tier

REGION_DOWN = "RegionDown"
TIER_DOWN = "TierDown"
PANIC = "RouterPanic"
ERROR_RATE = "RegionErrorRateHigh"
LATENCY = "RegionLatencyHigh"
REPLICATION_FAILED = "ReplicationJobFailed"
RELOAD_FAILED = "ConfigReloadFailed"
ALERT_NAMES = (
    REGION_DOWN,
    TIER_DOWN,
    PANIC,
    ERROR_RATE,
    LATENCY,
    REPLICATION_FAILED,
    RELOAD_FAILED,
)

MIN_REQUESTS = 5  # rate and latency rules ignore windows with fewer requests than this
REPLICATION_HOLD_S = 3600.0  # a failed job's alert resolves by itself after this long
DOWN_STATES = frozenset({RegionState.UNHEALTHY, RegionState.EJECTED})


# -- facts and rules (pure) ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicationFailure:
    job_id: str
    kind: str
    name: str
    error: str
    at: float  # wall clock


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    snapshot: Snapshot
    traffic: Mapping[str, RegionTraffic]  # region id -> traffic over alerts.window
    reload_errors: Sequence[str] | None = None  # the last reload failed with these
    replication_failures: Sequence[ReplicationFailure] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    """A rule's finding: this alert should be firing now."""

    name: str
    labels: tuple[tuple[str, str], ...]  # besides alertname and severity
    severity: str
    summary: str
    description: str
    value: float | None = None

    @property
    def key(self) -> str:
        return self.name + "".join(f"|{k}={v}" for k, v in self.labels)


def evaluate(facts: Facts, cfg: AlertsConfig) -> list[Condition]:
    """Every condition that holds in ``facts``; no clock, no I/O. Rules run in RULES order."""
    return [condition for rule in RULES for condition in rule(facts, cfg)]


def _regions_down(facts: Facts, cfg: AlertsConfig) -> Iterator[Condition]:
    for r in facts.snapshot.regions:
        if r.state in DOWN_STATES:
            how = "failing health checks" if r.state is RegionState.UNHEALTHY else "ejected"
            yield Condition(
                name=REGION_DOWN,
                labels=(("region", r.id),),
                severity="critical",
                summary=f"region {r.id} is down ({r.state.value})",
                description=f"{r.name or r.id} ({r.endpoint.url}) is {how}; "
                "its traffic goes to other regions",
            )


def _tiers_down(facts: Facts, cfg: AlertsConfig) -> Iterator[Condition]:
    tiers: dict[int, list[bool]] = {}
    for r in filter(counts_for_tier, facts.snapshot.regions):
        tiers.setdefault(r.priority, []).append(r.eligible)
    for priority, eligible in sorted(tiers.items()):
        if not any(eligible):
            yield Condition(
                name=TIER_DOWN,
                labels=(("tier", str(priority)),),
                severity="critical",
                summary=f"every region of tier {priority} is down",
                description=f"all {len(eligible)} regions with priority {priority} are "
                "out of rotation; their traffic spills to other tiers",
                value=float(len(eligible)),
            )


def _panic(facts: Facts, cfg: AlertsConfig) -> Iterator[Condition]:
    if facts.snapshot.panic:
        yield Condition(
            name=PANIC,
            labels=(),
            severity="critical",
            summary="router is in panic mode (failing open)",
            description="every tier is below failover.panic_threshold, so traffic goes "
            "to all regions, healthy or not",
        )


def _traffic(facts: Facts, cfg: AlertsConfig) -> Iterator[Condition]:
    """Error rate and p95 latency per region, over the window, once it has enough requests."""
    for r in facts.snapshot.regions:
        t = facts.traffic.get(r.id)
        if t is None or t.requests < MIN_REQUESTS:
            continue
        if t.error_rate > cfg.error_rate:
            yield Condition(
                name=ERROR_RATE,
                labels=(("region", r.id),),
                severity="warning",
                summary=f"region {r.id}: {t.error_rate:.1%} of requests failed",
                description=f"{t.errors} of {t.requests} requests answered 5xx over the "
                f"last {cfg.window_s:g}s (threshold {cfg.error_rate:.1%})",
                value=round(t.error_rate, 4),
            )
        if t.p95_s is not None and t.p95_s > cfg.latency_p95_s:
            yield Condition(
                name=LATENCY,
                labels=(("region", r.id),),
                severity="warning",
                summary=f"region {r.id}: p95 latency {t.p95_s * 1000:.0f} ms",
                description=f"p95 over the last {cfg.window_s:g}s is "
                f"{t.p95_s * 1000:.0f} ms (threshold {cfg.latency_p95_s * 1000:.0f} ms)",
                value=round(t.p95_s, 6),
            )


def _replication_failed(facts: Facts, cfg: AlertsConfig) -> Iterator[Condition]:
    for f in facts.replication_failures:
        yield Condition(
            name=REPLICATION_FAILED,
            labels=(("kind", f.kind), ("name", f.name)),
            severity="warning",
            summary=f"replication job {f.job_id} ({f.kind} {f.name}) failed",
            description=f.error or "the job failed",
        )


def _reload_failed(facts: Facts, cfg: AlertsConfig) -> Iterator[Condition]:
    if facts.reload_errors is not None:
        yield Condition(
            name=RELOAD_FAILED,
            labels=(),
            severity="warning",
            summary="config reload rejected; the previous config keeps serving",
            description="; ".join(facts.reload_errors) or "reload failed",
        )


Rule = Callable[[Facts, AlertsConfig], Iterable[Condition]]
RULES: tuple[Rule, ...] = (
    _regions_down,
    _tiers_down,
    _panic,
    _traffic,
    _replication_failed,
    _reload_failed,
)


def replication_failures(engine: object, now: float) -> tuple[ReplicationFailure, ...]:
    """Artifacts whose latest finished job failed (within the hold time), from ``engine.jobs``.

    Duck-typed on purpose (jobs with ``id``, ``kind``, ``name``, ``state``, ``finished_at``,
    ``error``), so alerts work with or without the replication engine.
    """
    jobs: Any = getattr(engine, "jobs", None)
    if isinstance(jobs, Mapping):
        jobs = list(jobs.values())
    latest: dict[tuple[str, str], Any] = {}
    for job in jobs or ():
        state = str(getattr(job, "state", ""))
        finished = getattr(job, "finished_at", None)
        if state not in ("succeeded", "failed") or finished is None:
            continue
        key = (str(job.kind), str(job.name))
        if key not in latest or finished >= latest[key].finished_at:
            latest[key] = job
    return tuple(
        ReplicationFailure(
            job_id=str(job.id), kind=kind, name=name, error=str(job.error or ""), at=job.finished_at
        )
        for (kind, name), job in sorted(latest.items())
        if str(job.state) == "failed" and now - job.finished_at <= REPLICATION_HOLD_S
    )
