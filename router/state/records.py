"""What the registry keeps per region (``RegionRecord``, private to it: changed only through
``Registry`` methods) and what it reports when a region's state changes (``Transition``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from router.config.loader import RegionConfig
from router.state.snapshot import RegionState


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    at: float  # wall-clock seconds (time.time())
    region: str
    from_state: RegionState
    to_state: RegionState
    reason: str
    instance: str = ""  # the instance that saw it ("": this one); set when shared


@dataclass(slots=True, kw_only=True)
class RegionRecord:
    """Mutable per-region state, private to the registry."""

    config: RegionConfig  # effective: the file's (or registration's) values plus overrides
    source: Literal["config", "runtime"]
    base: RegionConfig | None = None  # config regions: the file's values, before overrides
    overrides: dict[str, object] = field(default_factory=dict)
    failover_target: str | None = None  # where pinned sessions go while failed over
    state: RegionState = RegionState.UNKNOWN
    probed: bool = False  # at least one probe verdict
    probe_up: bool = False  # active-check verdict after thresholds (this instance's probes)
    quorum_up: bool | None = None  # several instances: the quorum's verdict, which wins
    ejected_until: float | None = None  # monotonic
    eject_sticky: bool = False  # guarded-failback ejection: a passing probe does not end it
    times_ejected: int = 0  # ejection multiplier; drops by 1 per base_ejection_time back in
    ejections_decay_at: float | None = None  # monotonic; when times_ejected next drops
    ever_up: bool = False  # has served: only such a region slow-starts when it comes back
    ramp_started_at: float | None = None  # monotonic; slow start in progress
    ramp: float = 1.0
    manual: str | None = None  # "draining" | "failed_over" while an operator holds it out
    drain_until: float | None = None  # monotonic end of the drain period
    removing: bool = False
    probe_latency_s: float | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
