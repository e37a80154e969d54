"""Alerts: successive rule evaluations turned into firing and resolved alerts; the webhook.

The rules are pure and live in router/monitoring/rules.py. ``AlertBook`` turns successive
evaluations into firing and resolved alerts with timestamps (synchronous, clock passed in),
and ``AlertEngine`` runs the loop, exports ``router_alerts_firing`` and hands changes to the
webhook notifier.
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
from router.monitoring.rules import (
    ALERT_NAMES,
    MIN_REQUESTS,
    Condition,
    Facts,
    evaluate,
    replication_failures,
)
from router.monitoring.webhook import WebhookNotifier
from router.monitoring.window import TrafficWindow
from router.runtime import Runtime
from router.state.registry import Registry

log = logging.getLogger("router.monitoring.alerts")

RESOLVED_KEEP = 200  # resolved alerts kept for GET /admin/alerts


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
