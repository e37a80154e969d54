"""``Cluster``: this instance as one of several sharing a Redis store (``state.backend: redis``).

It owns the health quorum (router/cluster/quorum.py) and the replication job leases
(router/cluster/leases.py), and reports both in /admin/status. Applying other instances'
changes to the registry is the control plane's job (router/control/remote.py decides,
``Control`` applies under its lock); this object only counts them.
"""

from __future__ import annotations

from typing import Any

from router.cluster.leases import JobLeases
from router.cluster.quorum import HealthQuorum
from router.replication.engine import ReplicationEngine
from router.runtime import Runtime
from router.store.redis import ChangeSink, RedisStateStore


class Cluster:
    def __init__(
        self,
        runtime: Runtime,
        replication: ReplicationEngine,
        store: RedisStateStore,
        *,
        apply_change: ChangeSink,
    ) -> None:
        self.store = store
        self.quorum = HealthQuorum(runtime, store)
        self.leases = JobLeases(replication, store)
        self.applied = 0  # other instances' changes applied here
        # The wiring, in one place: the others' changes go to ``apply_change`` (Control's),
        # this instance's verdicts and the others' meet in the quorum (recomputed after
        # Redis comes back), and replication jobs run only under a lease.
        store.follow(
            changes=apply_change, health=self.quorum.on_peer, reconnected=self.quorum.recompute
        )
        runtime.health.on_verdict = self.quorum.on_local_verdict
        replication.coordinator = self.leases

    def __repr__(self) -> str:
        return f"<Cluster {self.store.instance_id} applied={self.applied} {self.store!r}>"

    async def start(self) -> None:
        await self.quorum.start()
        await self.leases.start()

    async def stop(self) -> None:
        await self.leases.stop()
        await self.quorum.stop()

    @property
    def stale(self) -> bool:
        """Reads answer from the last known state: the shared store is unreachable."""
        return not self.store.connected

    def status(self) -> dict[str, Any]:
        """The ``cluster`` section of /admin/status (plus ``stale`` at the top level)."""
        return {
            "stale": self.stale,
            "cluster": {
                "instance_id": self.store.instance_id,
                "store": self.store.status(),
                "changes_applied": self.applied,
                "health": self.quorum.status(),
                "replication_leases": self.leases.status(),
            },
        }
