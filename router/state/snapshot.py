"""Immutable routing snapshots: everything the hot path reads, built by the registry.

A snapshot is plain frozen data (no locks, no clocks): the proxy reads ``holder.current``
once per request. It is also what a supervisor will ship to worker processes, so it holds
only values, never live objects.

Compiled with mypyc (setup.py): the selector and the exchange read these attributes on
every request, and a native class is a struct read where a Python dataclass is a generic
attribute lookup. Compiled, ``slots=True`` is not honoured and pickle would go through the
frozen ``__setattr__``, so each class pickles by its init fields (``__reduce__``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Literal

from router.config.loader import Config, Endpoint, RouteConfig


class RegionState(StrEnum):
    UNKNOWN = "unknown"  # registered, not yet probed: not eligible
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"  # active checks failed
    EJECTED = "ejected"  # passive outlier detection
    RECOVERING = "recovering"  # slow start after coming back
    DRAINING = "draining"  # no new requests; affinity kept; in-flight finish
    FAILED_OVER = "failed_over"  # taken out by an operator


ELIGIBLE_STATES = frozenset({RegionState.HEALTHY, RegionState.RECOVERING})
# out of rotation by an operator: never counted in tier health, never opened by panic
MANUAL_STATES = frozenset({RegionState.DRAINING, RegionState.FAILED_OVER})


class _PlainValue:
    """Pickles by its init fields: compiled, a frozen dataclass would go through its
    frozen ``__setattr__`` (module docstring)."""

    __slots__ = ()

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), _init_values(self)))


@dataclass(frozen=True, slots=True, kw_only=True)
class RegionView(_PlainValue):
    index: int  # position in Snapshot.regions
    id: str
    name: str
    endpoint: Endpoint
    weight: int
    priority: int
    labels: Mapping[str, str]
    max_inflight: int
    ca_file: str | None
    metrics_path: str | None
    source: Literal["config", "runtime"]
    state: RegionState
    # weight after slow start (0 < ramp <= 1): what weighted strategies use
    effective_weight: float
    # latency estimate from active probes (seconds), None until measured
    probe_latency_s: float | None = None
    artifacts: Mapping[str, str] = field(default_factory=dict)  # name -> sha256
    failover_target: str | None = None  # an operator's target for sessions pinned here
    protocol: Literal["http1", "h2"] = "http1"  # h2: requests go over HTTP/2 (h2upstream)
    # the X-Router-Region response header line, built once per snapshot, not per response
    region_header_line: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        line = b"X-Router-Region: %b\r\n" % self.id.encode()
        object.__setattr__(self, "region_header_line", line)

    @property
    def eligible(self) -> bool:
        return self.state in ELIGIBLE_STATES


@dataclass(frozen=True, slots=True, kw_only=True)
class ArtifactInfo(_PlainValue):
    """What replication knows of one artifact name (router/state/artifacts.py routes by it)."""

    name: str
    sha256: str | None = None  # the latest verified digest; None until a copy is verified
    source: str | None = None  # the region the latest job of this name read from
    read_at: float = 0.0  # wall clock: when that digest (or source) was read


@dataclass(frozen=True, slots=True, kw_only=True)
class Tier(_PlainValue):
    priority: int
    regions: tuple[RegionView, ...]  # candidates of this tier (eligible, or all in panic)
    share: float  # fraction of the route's traffic this tier takes (0..1)
    health_percent: float  # eligible / counted regions x 100 (before overprovisioning)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutePlan(_PlainValue):
    """Where one route's traffic may go right now."""

    route: RouteConfig | None  # None: the default (all regions, top-level strategy)
    strategy: str
    regions: tuple[RegionView, ...]  # every region the route names (any state)
    tiers: tuple[Tier, ...]  # tiers with share > 0 first, in priority order
    panic: bool
    # requires_artifact: the digest regions must hold (None: any) and the fallback region
    artifact_sha256: str | None = None
    artifact_fallback: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot(_PlainValue):
    version: int
    config: Config
    regions: tuple[RegionView, ...]
    by_id: Mapping[str, RegionView]
    default_plan: RoutePlan
    route_plans: tuple[RoutePlan, ...]  # parallel to config.routes
    panic: bool  # the default plan is in panic
    # earliest time (monotonic seconds) at which an ineligible region may become eligible
    next_eligible_at: float | None = None
    artifacts: Mapping[str, ArtifactInfo] = field(default_factory=dict)  # by name

    def __repr__(self) -> str:
        eligible = sum(1 for r in self.regions if r.eligible)
        return (
            f"<Snapshot v{self.version} regions={len(self.regions)} "
            f"eligible={eligible} panic={self.panic}>"
        )


def _init_values(obj: object) -> dict[str, object]:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if f.init}  # type: ignore[arg-type]


def _rebuild(cls: type[object], values: dict[str, object]) -> object:
    return cls(**values)


class SnapshotHolder:
    """The one mutable cell the data plane reads: ``holder.current``.

    In one process the registry writes it directly; with worker processes the worker's
    control-channel reader writes it. The proxy never sees the writer.
    """

    __slots__ = ("current",)

    def __init__(self, snapshot: Snapshot) -> None:
        self.current = snapshot

    def __repr__(self) -> str:
        return f"<SnapshotHolder {self.current!r}>"
