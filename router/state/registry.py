"""The one owner of region state: synchronous mutations, immutable snapshots out.

Every mutation is a plain method with no I/O that returns what happened (a ``Transition``
when a region's state changed); the caller logs, counts and persists it. After each
mutation the registry rebuilds its snapshot and hands it to its listeners (the proxy's
``SnapshotHolder`` in one process, a broadcaster to worker processes with several).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType

from router.config.loader import Config, RegionConfig
from router.errors import RegionConflict, UnknownRegion
from router.state.build import LOCAL_DOUBT_FACTOR, build_snapshot
from router.state.records import RegionRecord, Transition
from router.state.snapshot import ArtifactInfo, RegionState, Snapshot

HISTORY_LIMIT = 1000

__all__ = ["HISTORY_LIMIT", "LOCAL_DOUBT_FACTOR", "RegionRecord", "Registry", "Transition"]


class Registry:
    def __init__(self, config: Config, *, now: float = 0.0) -> None:
        self._config = config
        self._records: dict[str, RegionRecord] = {}
        self._version = itertools.count(1)
        self._listeners: list[Callable[[Snapshot], None]] = []
        self.history: deque[Transition] = deque(maxlen=HISTORY_LIMIT)
        self._artifacts: dict[str, ArtifactInfo] = {}  # replication's catalog, by name
        for rc in config.regions:
            self._records[rc.id] = RegionRecord(config=rc, source="config", base=rc)
        self._snapshot = self._build()

    # -- reading -----------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def record(self, region_id: str) -> RegionRecord:
        try:
            return self._records[region_id]
        except KeyError:
            raise UnknownRegion(region_id) from None

    def find(self, region_id: str) -> RegionRecord | None:
        return self._records.get(region_id)

    def records(self) -> Iterable[RegionRecord]:
        return self._records.values()

    def subscribe(self, listener: Callable[[Snapshot], None]) -> None:
        self._listeners.append(listener)
        listener(self._snapshot)

    def clone(self, now: float) -> Registry:
        """A detached copy (records copied, no listeners, no history) for what-if questions."""
        side = Registry(self._config, now=now)
        side._records = {
            rid: replace(rec, overrides=dict(rec.overrides), artifacts=dict(rec.artifacts))
            for rid, rec in self._records.items()
        }
        side.publish(now)
        return side

    def __repr__(self) -> str:
        s = self._snapshot
        eligible = sum(1 for r in s.regions if r.eligible)
        return (
            f"<Registry v{s.version} regions={len(s.regions)} eligible={eligible} panic={s.panic}>"
        )

    # -- membership --------------------------------------------------------------------

    def add_region(self, rc: RegionConfig, now: float) -> None:
        if rc.id in self._records:
            raise RegionConflict(f"region {rc.id!r} already exists")
        self._records[rc.id] = RegionRecord(config=rc, source="runtime")
        self.publish(now)

    def update_region(self, region_id: str, now: float, **changes: object) -> RegionConfig:
        """Change name/weight/priority/labels; on a config region these are overrides."""
        rec = self.record(region_id)
        if rec.source == "config":
            rec.overrides.update(changes)
        rec.config = replace(rec.config, **changes)  # type: ignore[arg-type]  # validated by caller
        self.publish(now)
        return rec.config

    def set_overrides(self, region_id: str, overrides: Mapping[str, object], now: float) -> None:
        """A config region's overrides, replaced as a whole (another instance's, validated)."""
        rec = self.record(region_id)
        if rec.source != "config" or rec.base is None:
            raise RegionConflict(f"region {region_id!r} is not defined in the config file")
        rec.overrides = dict(overrides)
        rec.config = replace(rec.base, **rec.overrides)  # type: ignore[arg-type]  # validated fields
        self.publish(now)

    def restore_region(
        self, region_id: str, config: RegionConfig, overrides: Mapping[str, object], now: float
    ) -> None:
        """Put back what ``region_config`` returned: the rollback of an unstored change."""
        rec = self.record(region_id)
        rec.config, rec.overrides = config, dict(overrides)
        self.publish(now)

    def region_config(self, region_id: str) -> tuple[RegionConfig, dict[str, object]]:
        """The region's effective config and a copy of its overrides (see restore_region)."""
        rec = self.record(region_id)
        return rec.config, dict(rec.overrides)

    def assume_state(self, region_id: str, state: str, now: float) -> None:
        """What-if questions only (on a ``clone``): set the facts from which the next ``tick``
        derives ``state`` ("healthy"/"up", "unhealthy"/"down", "ejected", "failed_over",
        "draining"); ``ValueError`` for any other."""
        rec = self.record(region_id)
        rec.manual, rec.drain_until, rec.ramp_started_at, rec.ramp = None, None, None, 1.0
        rec.probed, rec.probe_up, rec.ejected_until = True, True, None
        if state in ("unhealthy", "down"):
            rec.probe_up = False
        elif state == "ejected":
            rec.ejected_until = now + 3600.0
        elif state in ("failed_over", "draining"):
            rec.manual = state
        elif state not in ("healthy", "up"):
            raise ValueError(f"unknown hypothetical state {state!r}")

    def set_removing(self, region_id: str, removing: bool) -> None:
        """Mark a runtime region as on its way out (writes refuse it); not in the snapshot."""
        self.record(region_id).removing = removing

    def remove_region(self, region_id: str, now: float) -> None:
        rec = self.record(region_id)
        if rec.source == "config":
            raise RegionConflict(
                f"region {region_id!r} is defined in the config file; remove it there and reload"
            )
        del self._records[region_id]
        self.publish(now)

    def apply_config(self, config: Config, now: float) -> None:
        """Swap in a new config; regions with the same id and endpoint keep their state."""
        old = self._records
        new: dict[str, RegionRecord] = {}
        for rc in config.regions:
            prev = old.get(rc.id)
            if prev is not None and prev.config.endpoint == rc.endpoint:
                # An override survives until the file changes that same field.
                base = prev.base or rc
                prev.overrides = {
                    k: v for k, v in prev.overrides.items() if getattr(base, k) == getattr(rc, k)
                }
                prev.base = rc
                prev.config = replace(rc, **prev.overrides)  # type: ignore[arg-type]  # fields of RegionConfig
                prev.source = "config"
                new[rc.id] = prev
            else:
                new[rc.id] = RegionRecord(config=rc, source="config", base=rc)
        for rid, rec in old.items():
            if rec.source == "runtime" and rid not in new:
                new[rid] = rec
        self._records = new
        self._config = config
        self.publish(now)

    # -- artifact inventory (replication) -----------------------------------------------

    def artifacts(self) -> Mapping[str, ArtifactInfo]:
        return MappingProxyType(self._artifacts)

    def set_artifact(
        self, region_id: str, name: str, sha256: str, read_at: float, now: float
    ) -> None:
        """A verified copy on a region; its digest turns latest unless a newer read exists."""
        self.record(region_id).artifacts[name] = sha256
        info = self._artifacts.get(name) or ArtifactInfo(name=name)
        if info.sha256 is None or read_at >= info.read_at:
            self._artifacts[name] = replace(info, sha256=sha256, read_at=read_at)
        self.publish(now)

    def set_artifact_source(self, name: str, source: str, read_at: float, now: float) -> None:
        """The region the latest job of ``name`` read from (``artifact_fallback: source``)."""
        info = self._artifacts.get(name) or ArtifactInfo(name=name)
        if read_at >= info.read_at:
            self._artifacts[name] = replace(info, source=source)
            self.publish(now)

    def remove_artifact(self, region_id: str, name: str, now: float) -> bool:
        removed = self.record(region_id).artifacts.pop(name, None) is not None
        if removed:
            self.publish(now)
        return removed

    def load_artifacts(
        self,
        holdings: Mapping[str, Mapping[str, str]],
        catalog: Mapping[str, ArtifactInfo],
        now: float,
    ) -> None:
        """Restore persisted copies (region id -> name -> sha256) and the catalog at once."""
        for region_id, held in holdings.items():
            rec = self._records.get(region_id)
            if rec is not None:
                rec.artifacts.update(held)
        self._artifacts.update(catalog)
        self.publish(now)

    # -- health verdicts ---------------------------------------------------------------

    def set_probe_verdict(
        self, region_id: str, up: bool, now: float, reason: str, wall: float
    ) -> Transition | None:
        """Record the thresholded active-check verdict (health.py applies thresholds)."""
        rec = self.record(region_id)
        was_up = _effective_up(rec)
        rec.probed = True
        rec.probe_up = up
        if up:
            back = not was_up and rec.ever_up
            if rec.ejected_until is not None and not rec.eject_sticky:
                self._end_ejection(rec, now)  # a passing active check un-ejects
                back = True
            # HAProxy's rule: slow start only for a region seen failed, never at start-up.
            if back and self._config.failover.slow_start_s > 0:
                rec.ramp_started_at = now
                rec.ramp = 0.0
            rec.ever_up = True
        return self._refresh(rec, now, wall, reason)

    def set_quorum_verdict(
        self, region_id: str, up: bool | None, now: float, wall: float, reason: str
    ) -> Transition | None:
        """The verdict of the quorum of live instances (None: this instance's own decides).

        A region comes back from a quorum's "down" like from its own probes: slow start.
        """
        rec = self.record(region_id)
        if up == rec.quorum_up:
            return None
        was_up = _effective_up(rec)
        rec.quorum_up = up
        if _effective_up(rec) and not was_up:
            if rec.ever_up and self._config.failover.slow_start_s > 0:
                rec.ramp_started_at = now
                rec.ramp = 0.0
            rec.ever_up = True
        return self._refresh(rec, now, wall, reason)

    def set_probe_latency(self, region_id: str, latency_s: float) -> None:
        self.record(region_id).probe_latency_s = latency_s

    def eject(
        self, region_id: str, now: float, wall: float, reason: str, *, sticky: bool = False
    ) -> Transition | None:
        """Take a region out for base x times-ejected (capped); ``sticky``: probes can't end it."""
        rec = self.record(region_id)
        od = self._config.outlier_detection
        rec.times_ejected += 1
        duration = min(od.base_ejection_time_s * rec.times_ejected, od.max_ejection_time_s)
        rec.ejected_until = now + duration
        rec.eject_sticky = sticky
        rec.ejections_decay_at = None
        rec.ramp_started_at = None
        rec.ramp = 1.0
        return self._refresh(rec, now, wall, reason)

    def set_manual(
        self,
        region_id: str,
        manual: str | None,
        now: float,
        wall: float,
        reason: str,
        drain_s: float = 0.0,
        target: str | None = None,
    ) -> Transition | None:
        """Take a region out by hand ("draining" / "failed_over") or put it back (None).

        Putting it back makes it wait for its next passing probe before it is eligible.
        """
        rec = self.record(region_id)
        if manual is None and rec.manual is not None:
            rec.probed = False  # eligible again only after the next passing check
            rec.probe_up = False
            rec.quorum_up = None  # the cluster's verdict is taken afresh as well
        rec.manual = manual
        rec.failover_target = target if manual else None
        rec.drain_until = now + drain_s if manual and drain_s > 0 else None
        return self._refresh(rec, now, wall, reason)

    def tick(self, now: float, wall: float) -> list[Transition]:
        """Advance time: ejections expire, drains end, slow-start ramps grow."""
        out: list[Transition] = []
        changed = False
        slow = self._config.failover.slow_start_s
        for rec in self._records.values():
            reason = "tick"
            if rec.ejected_until is not None and now >= rec.ejected_until:
                self._end_ejection(rec, now)
                changed = True
                reason = "ejection time over"
                if rec.probe_up and slow > 0:
                    rec.ramp_started_at, rec.ramp = now, 0.0
            if rec.ejections_decay_at is not None and now >= rec.ejections_decay_at:
                rec.times_ejected = max(0, rec.times_ejected - 1)
                rec.ejections_decay_at = (
                    now + self._config.outlier_detection.base_ejection_time_s
                    if rec.times_ejected
                    else None
                )
            if rec.drain_until is not None and now >= rec.drain_until:
                rec.drain_until = None
                changed = True
                reason = "drain period over"
            if rec.ramp_started_at is not None:
                ramp = (now - rec.ramp_started_at) / slow if slow > 0 else 1.0
                if ramp >= 1.0:
                    rec.ramp_started_at, rec.ramp = None, 1.0
                    reason = "slow start complete"
                else:
                    rec.ramp = ramp
                changed = True
            t = self._derive(rec, now, wall, reason)
            if t is not None:
                out.append(t)
        if changed or out:
            self.publish(now)
        return out

    # -- internals ---------------------------------------------------------------------

    def _end_ejection(self, rec: RegionRecord, now: float) -> None:
        rec.ejected_until = None
        rec.eject_sticky = False
        if rec.times_ejected:
            rec.ejections_decay_at = now + self._config.outlier_detection.base_ejection_time_s

    def _refresh(
        self, rec: RegionRecord, now: float, wall: float, reason: str
    ) -> Transition | None:
        t = self._derive(rec, now, wall, reason)
        self.publish(now)
        return t

    def _derive(self, rec: RegionRecord, now: float, wall: float, reason: str) -> Transition | None:
        if rec.manual is not None:
            draining = rec.manual == "draining" or rec.drain_until is not None
            state = RegionState.DRAINING if draining else RegionState.FAILED_OVER
        elif not rec.probed and rec.quorum_up is None:
            state = RegionState.UNKNOWN
        elif not _effective_up(rec):
            state = RegionState.UNHEALTHY
        elif rec.ejected_until is not None:
            state = RegionState.EJECTED
        elif rec.ramp_started_at is not None:
            state = RegionState.RECOVERING
        else:
            state = RegionState.HEALTHY
        if state is rec.state:
            return None
        t = Transition(
            at=wall, region=rec.config.id, from_state=rec.state, to_state=state, reason=reason
        )
        rec.state = state
        self.history.append(t)
        return t

    def publish(self, now: float) -> None:
        self._snapshot = self._build()
        for listener in self._listeners:
            listener(self._snapshot)

    def _build(self) -> Snapshot:
        return build_snapshot(
            next(self._version), self._config, self._records.values(), self._artifacts
        )


def _effective_up(rec: RegionRecord) -> bool:
    """Up by the quorum's verdict when there is one, else by this instance's probes."""
    if rec.quorum_up is not None:
        return rec.quorum_up
    return rec.probed and rec.probe_up
