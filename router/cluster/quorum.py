"""Health quorum across instances: a region is down cluster-wide only when enough agree.

Each instance publishes its own thresholded verdict per region (``up``/``down``, none
before its first probe) with a time to live of 3 health intervals, renewed by a heartbeat:
an instance is live while that record lives. A region counts as down when the quorum of
the live instances reporting on it say so: more than half (``majority``), or at least
``state.quorum`` percent (Route 53 calls a target healthy when more than 18% of its
checkers do: that is ``quorum: 82%``). The verdict goes to the registry
(``Registry.set_quorum_verdict``), where it wins over the instance's own, so every instance
routes alike. An instance whose own probes disagree keeps its view in status and metrics;
when its probes fail while the quorum says up it keeps the region in rotation at a tenth of
its weight (``LOCAL_DOUBT_FACTOR``), preferring others from where it stands.

With one live instance (or none reporting but this one) there is no quorum to ask: the
instance's own verdict decides, exactly as without a shared store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from router.cluster.coordination import Coordination
from router.errors import UnknownRegion
from router.metrics import GaugeCollector
from router.runtime import Runtime
from router.store.files import StoreWriteError
from router.store.redis import RedisStateStore

log = logging.getLogger("router.cluster.quorum")

LIVE_INTERVALS = 3  # an instance is live while its heartbeat is younger than this many
HEARTBEAT_MIN_S = 0.1


def quorum_down(down: int, reporting: int, quorum_percent: float | None) -> bool:
    """Do ``down`` of ``reporting`` instances make a quorum (None: a strict majority)?"""
    if reporting <= 0 or down <= 0:
        return False
    if quorum_percent is None:
        return 2 * down > reporting
    return 100.0 * down >= quorum_percent * reporting


def cluster_verdict(reports: Mapping[str, bool], quorum_percent: float | None) -> bool | None:
    """Up (True) or down (False) by quorum; None when fewer than two instances report."""
    if len(reports) < 2:
        return None
    down = sum(1 for up in reports.values() if not up)
    return not quorum_down(down, len(reports), quorum_percent)


def describe_quorum(quorum_percent: float | None) -> str:
    return "majority" if quorum_percent is None else f"{quorum_percent:g}%"


@dataclass(slots=True)
class Peer:
    verdicts: dict[str, bool] = field(default_factory=dict)
    expires_at: float = 0.0  # monotonic


class HealthQuorum:
    """Publishes this instance's verdicts, gathers the others', sets the quorum's verdict."""

    def __init__(self, runtime: Runtime, store: RedisStateStore) -> None:
        self.runtime = runtime
        self.registry = runtime.registry
        self.store = store
        self.coordination = Coordination(store)
        self.instance_id = store.instance_id
        self.peers: dict[str, Peer] = {}
        self._announce = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        metrics = runtime.metrics
        metrics.register(
            GaugeCollector(
                "router_region_local_verdict",
                "This instance's own probe verdict (1 up, 0 down); absent before its first",
                ["region"],
                lambda: [([rid], 1.0 if up else 0.0) for rid, up in self.local().items()],
            )
        )
        metrics.register(
            GaugeCollector(
                "router_health_disagreements",
                "1 while this instance's own verdict differs from the quorum's",
                ["region"],
                lambda: [
                    ([r], 1.0 if r in self.disagreements() else 0.0)
                    for r in self.registry.snapshot().by_id
                ],
            )
        )
        metrics.register(
            GaugeCollector(
                "router_cluster_instances_live",
                "Instances with a live heartbeat (this one included)",
                [],
                lambda: [([], float(len(self.live_peers()) + 1))],
            )
        )

    def __repr__(self) -> str:
        return f"<HealthQuorum {self.instance_id} live_peers={len(self.live_peers())}>"

    @property
    def quorum_percent(self) -> float | None:
        return self.registry.config.state.quorum_percent

    @property
    def ttl_s(self) -> float:
        return LIVE_INTERVALS * self.registry.config.health_check.interval_s

    # -- views -------------------------------------------------------------------------

    def local(self) -> dict[str, bool]:
        """This instance's own verdicts (regions it has a verdict on)."""
        return {rec.config.id: rec.probe_up for rec in self.registry.records() if rec.probed}

    def live_peers(self) -> dict[str, Peer]:
        now = time.monotonic()
        return {i: p for i, p in self.peers.items() if p.expires_at > now}

    def reports(self, region_id: str) -> dict[str, bool]:
        out = {
            i: p.verdicts[region_id]
            for i, p in self.live_peers().items()
            if region_id in p.verdicts
        }
        rec = self.registry.record(region_id)
        if rec.probed:
            out[self.instance_id] = rec.probe_up
        return out

    def disagreements(self) -> set[str]:
        out = set()
        for rec in self.registry.records():
            if rec.probed and rec.quorum_up is not None and rec.quorum_up != rec.probe_up:
                out.add(rec.config.id)
        return out

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        regions: dict[str, Any] = {}
        for rec in self.registry.records():
            rid = rec.config.id
            reports = self.reports(rid)
            regions[rid] = {
                "local": _word(rec.probe_up) if rec.probed else None,
                "quorum": _word(rec.quorum_up) if rec.quorum_up is not None else None,
                "reports": {i: _word(up) for i, up in sorted(reports.items())},
                "disagreement": rec.probed
                and rec.quorum_up is not None
                and rec.quorum_up != rec.probe_up,
            }
        return {
            "quorum": describe_quorum(self.quorum_percent),
            "instances": [
                {"id": self.instance_id, "self": True, "live": True},
                *(
                    {
                        "id": i,
                        "self": False,
                        "live": True,
                        "expires_in_s": round(p.expires_at - now, 3),
                    }
                    for i, p in sorted(self.live_peers().items())
                ),
            ],
            "regions": regions,
        }

    # -- events ------------------------------------------------------------------------

    def on_local_verdict(self, region_id: str, up: bool) -> None:
        self.recompute([region_id])
        self._announce.set()

    def on_peer(self, instance: str, doc: dict[str, Any], ttl_s: float) -> None:
        verdicts = doc.get("regions")
        if not isinstance(verdicts, dict):
            return
        self.peers[instance] = Peer(
            verdicts={str(k): bool(v) for k, v in verdicts.items()},
            expires_at=time.monotonic() + ttl_s,
        )
        self.recompute()

    def recompute(self, region_ids: list[str] | None = None) -> None:
        """Hand the quorum's verdict of each region to the registry."""
        q = self.quorum_percent
        ids = (
            region_ids if region_ids is not None else [r.config.id for r in self.registry.records()]
        )
        now, wall = time.monotonic(), time.time()
        for rid in ids:
            try:
                reports = self.reports(rid)
            except UnknownRegion:
                continue
            verdict = cluster_verdict(reports, q)
            down = sum(1 for up in reports.values() if not up)
            reason = (
                f"quorum ({describe_quorum(q)}): {down} of {len(reports)} instances report it down"
            )
            t = self.registry.set_quorum_verdict(rid, verdict, now, wall, reason)
            if t is not None:
                self.runtime.record_transition(t)

    # -- heartbeat ---------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health-quorum")

    async def stop(self) -> None:
        if self._task is not None:
            # A flag as well as cancel(): redis-py can turn a cancellation that lands in
            # its own timeout into a TimeoutError, which the loop would take as an error.
            self._stopping = True
            self._announce.set()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while not self._stopping:
            announce = self._announce.is_set()
            self._announce.clear()
            try:
                await self.beat(announce=announce)
            except StoreWriteError:
                pass  # the store counts and reports it; peers age out meanwhile
            except Exception:
                log.exception("health quorum heartbeat failed; continuing")
            self.recompute()  # peers whose heartbeat ran out no longer count
            period = max(HEARTBEAT_MIN_S, self.registry.config.health_check.interval_s / 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._announce.wait(), period)

    async def beat(self, *, announce: bool) -> None:
        """Publish our verdicts (TTL: 3 intervals) and read every live instance's."""
        ttl_ms = max(1, int(self.ttl_s * 1000))
        await self.coordination.put_health({"regions": self.local()}, ttl_ms, announce=announce)
        now = time.monotonic()
        seen = await self.coordination.fetch_health()
        for instance, (doc, ttl_s) in seen.items():
            if instance == self.instance_id:
                continue
            verdicts = doc.get("regions")
            if isinstance(verdicts, dict):
                self.peers[instance] = Peer(
                    verdicts={str(k): bool(v) for k, v in verdicts.items()},
                    expires_at=now + ttl_s,
                )
        for instance in [i for i in self.peers if i not in seen]:
            del self.peers[instance]


def _word(up: bool | None) -> str:
    return "up" if up else "down"
