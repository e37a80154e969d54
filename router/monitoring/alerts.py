"""Alert rules over the router's own state, evaluated periodically; firing, resolved, webhook.

The rules are pure: ``evaluate(facts, config)`` maps one ``Facts`` value (a registry
snapshot, recent traffic per region, the last reload, recent replication failures) to
the conditions that hold now. ``AlertBook`` turns successive evaluations into firing and
resolved alerts with timestamps (synchronous, clock passed in), and ``AlertEngine`` runs
the loop, exports ``router_alerts_firing`` and hands changes to the webhook notifier.

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

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from router import __version__
from router.config.loader import AlertsConfig
from router.config.validate import FieldError
from router.metrics import GaugeCollector
from router.monitoring.webhook import WebhookNotifier
from router.monitoring.window import RegionTraffic, TrafficWindow
from router.runtime import Runtime
from router.state.registry import Registry
from router.state.snapshot import RegionState, Snapshot
from router.state.tiers import counts_for_tier

log = logging.getLogger("router.monitoring.alerts")

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
RESOLVED_KEEP = 200  # resolved alerts kept for GET /admin/alerts
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
    """Every condition that holds in ``facts``; no clock, no I/O."""
    snap = facts.snapshot
    out: list[Condition] = []
    for r in snap.regions:
        if r.state in DOWN_STATES:
            how = "failing health checks" if r.state is RegionState.UNHEALTHY else "ejected"
            out.append(
                Condition(
                    name=REGION_DOWN,
                    labels=(("region", r.id),),
                    severity="critical",
                    summary=f"region {r.id} is down ({r.state.value})",
                    description=f"{r.name or r.id} ({r.endpoint.url}) is {how}; "
                    "its traffic goes to other regions",
                )
            )
    tiers: dict[int, list[bool]] = {}
    for r in filter(counts_for_tier, snap.regions):
        tiers.setdefault(r.priority, []).append(r.eligible)
    for priority, eligible in sorted(tiers.items()):
        if not any(eligible):
            out.append(
                Condition(
                    name=TIER_DOWN,
                    labels=(("tier", str(priority)),),
                    severity="critical",
                    summary=f"every region of tier {priority} is down",
                    description=f"all {len(eligible)} regions with priority {priority} are "
                    "out of rotation; their traffic spills to other tiers",
                    value=float(len(eligible)),
                )
            )
    if snap.panic:
        out.append(
            Condition(
                name=PANIC,
                labels=(),
                severity="critical",
                summary="router is in panic mode (failing open)",
                description="every tier is below failover.panic_threshold, so traffic goes "
                "to all regions, healthy or not",
            )
        )
    for r in snap.regions:
        t = facts.traffic.get(r.id)
        if t is None or t.requests < MIN_REQUESTS:
            continue
        if t.error_rate > cfg.error_rate:
            out.append(
                Condition(
                    name=ERROR_RATE,
                    labels=(("region", r.id),),
                    severity="warning",
                    summary=f"region {r.id}: {t.error_rate:.1%} of requests failed",
                    description=f"{t.errors} of {t.requests} requests answered 5xx over the "
                    f"last {cfg.window_s:g}s (threshold {cfg.error_rate:.1%})",
                    value=round(t.error_rate, 4),
                )
            )
        if t.p95_s is not None and t.p95_s > cfg.latency_p95_s:
            out.append(
                Condition(
                    name=LATENCY,
                    labels=(("region", r.id),),
                    severity="warning",
                    summary=f"region {r.id}: p95 latency {t.p95_s * 1000:.0f} ms",
                    description=f"p95 over the last {cfg.window_s:g}s is "
                    f"{t.p95_s * 1000:.0f} ms (threshold {cfg.latency_p95_s * 1000:.0f} ms)",
                    value=round(t.p95_s, 6),
                )
            )
    for f in facts.replication_failures:
        out.append(
            Condition(
                name=REPLICATION_FAILED,
                labels=(("kind", f.kind), ("name", f.name)),
                severity="warning",
                summary=f"replication job {f.job_id} ({f.kind} {f.name}) failed",
                description=f.error or "the job failed",
            )
        )
    if facts.reload_errors is not None:
        out.append(
            Condition(
                name=RELOAD_FAILED,
                labels=(),
                severity="warning",
                summary="config reload rejected; the previous config keeps serving",
                description="; ".join(facts.reload_errors) or "reload failed",
            )
        )
    return out


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


# -- firing and resolved ---------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Alert:
    name: str
    labels: dict[str, str]  # every label, alertname and severity included
    summary: str
    description: str
    starts_at: float  # wall clock
    ends_at: float | None = None
    value: float | None = None
    fingerprint: str = ""
    key: str = ""

    @property
    def firing(self) -> bool:
        return self.ends_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "alertname": self.name,
            "state": "firing" if self.firing else "resolved",
            "severity": self.labels.get("severity", ""),
            "labels": dict(self.labels),
            "summary": self.summary,
            "description": self.description,
            "value": self.value,
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
        }


class AlertBook:
    """Firing alerts by key and a bounded list of resolved ones; one synchronous update."""

    def __init__(self, *, keep_resolved: int = RESOLVED_KEEP, static_labels: Mapping[str, str]):
        self.firing: dict[str, Alert] = {}
        self.resolved: deque[Alert] = deque(maxlen=keep_resolved)
        self.static_labels = dict(static_labels)
        self.pending: dict[str, float] = {}  # key -> when its condition started to hold

    def __repr__(self) -> str:
        return f"<AlertBook firing={len(self.firing)} resolved={len(self.resolved)}>"

    def update(
        self, conditions: Iterable[Condition], now: float, for_s: float = 0.0
    ) -> list[Alert]:
        """Apply one evaluation; return the alerts that started firing or resolved.

        A condition fires once it has held for ``for_s`` (pending until then); one that
        stops holding while pending never fires.
        """
        changed: list[Alert] = []
        seen: set[str] = set()
        for c in conditions:
            seen.add(c.key)
            alert = self.firing.get(c.key)
            if alert is not None:  # still firing: keep its start, refresh the text
                alert.summary, alert.description, alert.value = c.summary, c.description, c.value
                continue
            since = self.pending.setdefault(c.key, now)
            if now - since < for_s:
                continue  # pending
            del self.pending[c.key]
            labels = {"alertname": c.name, **self.static_labels, **dict(c.labels)}
            labels["severity"] = c.severity
            alert = Alert(
                name=c.name,
                labels=labels,
                summary=c.summary,
                description=c.description,
                starts_at=now,
                value=c.value,
                fingerprint=fingerprint(labels),
                key=c.key,
            )
            self.firing[c.key] = alert
            changed.append(alert)
            log.warning("alert firing: %s %s", c.name, c.summary)
        for key in [k for k in self.pending if k not in seen]:
            del self.pending[key]
        for key in [k for k in self.firing if k not in seen]:
            alert = self.firing.pop(key)
            alert.ends_at = now
            self.resolved.append(alert)
            changed.append(alert)
            log.info("alert resolved: %s %s", alert.name, alert.summary)
        return changed

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(ALERT_NAMES, 0)
        for alert in self.firing.values():
            out[alert.name] = out.get(alert.name, 0) + 1
        return out


def fingerprint(labels: Mapping[str, str]) -> str:
    text = "\x00".join(f"{k}\x01{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- Alertmanager webhook body ---------------------------------------------------------

ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt for a firing alert


def rfc3339(wall: float) -> str:
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _common(items: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not items:
        return {}
    first = items[0]
    return {k: v for k, v in first.items() if all(i.get(k) == v for i in items[1:])}


def webhook_payload(
    group: str, alerts: Sequence[Alert], *, receiver: str, external_url: str
) -> dict[str, Any]:
    """The body Alertmanager POSTs to a webhook receiver (version 4), for one alertname."""
    labels = [a.labels for a in alerts]
    annotations = [{"summary": a.summary, "description": a.description} for a in alerts]
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{group}"}}',
        "truncatedAlerts": 0,
        "status": "firing" if any(a.firing for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": {"alertname": group},
        "commonLabels": _common(labels),
        "commonAnnotations": _common(annotations),
        "externalURL": external_url,
        "alerts": [
            {
                "status": "firing" if a.firing else "resolved",
                "labels": dict(a.labels),
                "annotations": ann,
                "startsAt": rfc3339(a.starts_at),
                "endsAt": ZERO_TIME if a.ends_at is None else rfc3339(a.ends_at),
                "generatorURL": f"{external_url}/admin/alerts",
                "fingerprint": a.fingerprint,
            }
            for a, ann in zip(alerts, annotations, strict=True)
        ],
    }


# -- the engine ------------------------------------------------------------------------


class ReloadLike(Protocol):
    @property
    def ok(self) -> bool: ...
    @property
    def errors(self) -> Sequence[FieldError]: ...


class AlertSource(Protocol):
    """What the engine reads: the control plane (``router.control.core.Control``)."""

    @property
    def runtime(self) -> Runtime: ...
    @property
    def registry(self) -> Registry: ...
    @property
    def window(self) -> TrafficWindow: ...
    @property
    def last_reload(self) -> ReloadLike | None: ...


class AlertEngine:
    """Evaluates the rules every ``alerts.evaluate_interval``; owns the webhook notifier."""

    def __init__(
        self,
        source: AlertSource,
        *,
        wall: Callable[[], float] = time.time,
        notifier: WebhookNotifier | None = None,
    ) -> None:
        self.source = source
        self.wall = wall
        runtime = source.runtime
        self.book = AlertBook(static_labels={"instance": runtime.instance_id})
        self.evaluations = 0
        self.notifier = notifier or WebhookNotifier(lambda: self.config.webhook)
        self._task: asyncio.Task[None] | None = None
        admin = source.registry.config.listen.admin
        self.external_url = f"http://{admin.host}:{admin.port}"
        runtime.metrics.register(
            GaugeCollector(
                "router_alerts_firing",
                "Alerts firing now, by alert name",
                ["alert"],
                lambda: [([name], float(n)) for name, n in self.book.counts().items()],
            )
        )

    def __repr__(self) -> str:
        return f"<AlertEngine evaluations={self.evaluations} {self.book!r}>"

    @property
    def config(self) -> AlertsConfig:
        return self.source.registry.config.alerts

    # -- evaluation ----------------------------------------------------------------------

    def facts(self, now: float) -> Facts:
        src = self.source
        cfg = self.config
        snap = src.registry.snapshot()
        traffic = {r.id: src.window.region(r.id, cfg.window_s) for r in snap.regions}
        reload_errors = None
        last = src.last_reload
        if last is not None and not last.ok:
            reload_errors = [str(e) for e in last.errors]
        return Facts(
            snapshot=snap,
            traffic=traffic,
            reload_errors=reload_errors,
            replication_failures=replication_failures(getattr(src, "replication", None), now),
        )

    def evaluate_now(self) -> list[Alert]:
        """One evaluation: update the book, queue webhook notifications; returns changes."""
        now = self.wall()
        cfg = self.config
        changed = self.book.update(evaluate(self.facts(now), cfg), now, cfg.for_s)
        self.evaluations += 1
        if changed and self.config.webhook:
            for group in sorted({a.name for a in changed}):
                # Like Alertmanager: the whole group (still firing) plus what just resolved.
                alerts = [a for a in self.book.firing.values() if a.name == group]
                alerts += [a for a in changed if a.name == group and not a.firing]
                self.notifier.notify(
                    webhook_payload(
                        group,
                        alerts,
                        receiver="region-router",
                        external_url=self.external_url,
                    )
                )
        return changed

    async def start(self) -> None:
        await self.notifier.start()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="alerts")

    async def _loop(self) -> None:
        while True:
            try:
                self.evaluate_now()
            except Exception:  # a rule bug must not stop alerting for good
                log.exception("alert evaluation failed")
            await asyncio.sleep(self.config.evaluate_interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.notifier.stop()

    # -- views ---------------------------------------------------------------------------

    def firing_json(self) -> list[dict[str, Any]]:
        return [a.to_json() for a in sorted(self.book.firing.values(), key=_order)]

    def to_json(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "firing": self.firing_json(),
            "pending": sorted(self.book.pending),
            "resolved": [a.to_json() for a in reversed(self.book.resolved)],
            "rules": {
                "error_rate": cfg.error_rate,
                "latency_p95_s": cfg.latency_p95_s,
                "window_s": cfg.window_s,
                "evaluate_interval_s": cfg.evaluate_interval_s,
                "for_s": cfg.for_s,
                "min_requests": MIN_REQUESTS,
                "names": list(ALERT_NAMES),
            },
            "evaluations": self.evaluations,
            "webhook": self.notifier.to_json() if cfg.webhook else None,
            "version": __version__,
        }


def _order(a: Alert) -> tuple[int, float]:
    return (0 if a.labels.get("severity") == "critical" else 1, a.starts_at)
