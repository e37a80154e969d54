"""The artifact inventory on disk: verified copies and the per-name catalog (kind artifacts)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from router.errors import UnknownRegion
from router.state.registry import Registry
from router.state.snapshot import ArtifactInfo
from router.store.docs import split_key
from router.store.files import StateStore

log = logging.getLogger("router.replication.inventory")


class ArtifactInventory:
    """Records verified copies in the registry and keeps them in the store (kind artifacts).

    Each holding is saved with the region's endpoint: a region whose endpoint changed
    between runs is a different server and does not inherit what the old one held.
    """

    def __init__(
        self, registry: Registry, store: StateStore, *, wall: Callable[[], float] = time.time
    ) -> None:
        self.registry = registry
        self.store = store
        self.wall = wall

    def __repr__(self) -> str:
        held = sum(len(r.artifacts) for r in self.registry.records())
        return f"<ArtifactInventory names={len(self.registry.artifacts())} copies={held}>"

    def restore(self) -> None:
        data = self.store.load("artifacts") or {}
        if not isinstance(data, dict):
            return
        holdings: dict[str, dict[str, str]] = {}
        known = {r.config.id: r.config.endpoint.url for r in self.registry.records()}
        for region_id, entry in (data.get("regions") or {}).items():
            if not isinstance(entry, dict) or region_id not in known:
                continue
            if entry.get("endpoint") != known[region_id]:
                log.warning(
                    "region %s changed endpoint; its artifact copies are dropped", region_id
                )
                continue
            held = entry.get("artifacts") or {}
            holdings[region_id] = {str(k): str(v) for k, v in held.items()}
        catalog: dict[str, ArtifactInfo] = {}
        for name, item in (data.get("catalog") or {}).items():
            if isinstance(item, dict):
                catalog[name] = ArtifactInfo(
                    name=name,
                    sha256=item.get("sha256"),
                    source=item.get("source"),
                    read_at=float(item.get("read_at") or 0.0),
                )
        self.registry.load_artifacts(holdings, catalog, time.monotonic())

    async def record_source(self, name: str, source: str, read_at: float) -> None:
        """A job has read ``name`` from ``source``: it is the fallback from now on."""
        self.registry.set_artifact_source(name, source, read_at, time.monotonic())
        await self.save()

    async def record_copy(self, region_id: str, name: str, sha256: str, read_at: float) -> None:
        """A verified copy of ``name`` (read from its source at ``read_at``) on a region."""
        try:
            self.registry.set_artifact(region_id, name, sha256, read_at, time.monotonic())
        except UnknownRegion:
            log.warning("region %s was removed; its copy of %s is not recorded", region_id, name)
            return
        await self.save()

    async def remove(self, region_id: str, name: str) -> bool:
        """Forget a copy; raises the store's write error (nothing changed) when not stored."""
        held = self.registry.record(region_id).artifacts.get(name)
        removed = self.registry.remove_artifact(region_id, name, time.monotonic())
        if removed:
            try:
                await self.save(strict=True)
            except Exception:
                assert held is not None
                self.registry.load_artifacts({region_id: {name: held}}, {}, time.monotonic())
                raise
        return removed

    def apply_remote(self, entries: Mapping[str, object], deleted: list[str]) -> None:
        """Copies and catalog entries another instance recorded (router/store/docs.py keys)."""
        holdings: dict[str, dict[str, str]] = {}
        catalog: dict[str, ArtifactInfo] = {}
        now = time.monotonic()
        for key, value in entries.items():
            prefix, rest = split_key(key)
            if not isinstance(value, dict):
                continue
            if prefix == "copy":
                region_id, _, name = rest.partition("/")
                try:
                    rec = self.registry.record(region_id)
                except UnknownRegion:
                    continue
                if value.get("endpoint") == rec.config.endpoint.url and value.get("sha256"):
                    holdings.setdefault(region_id, {})[name] = str(value["sha256"])
            elif prefix == "catalog":
                catalog[rest] = ArtifactInfo(
                    name=rest,
                    sha256=value.get("sha256"),
                    source=value.get("source"),
                    read_at=float(value.get("read_at") or 0.0),
                )
        if holdings or catalog:
            self.registry.load_artifacts(holdings, catalog, now)
        for key in deleted:
            prefix, rest = split_key(key)
            if prefix == "copy":
                region_id, _, name = rest.partition("/")
                try:
                    self.registry.remove_artifact(region_id, name, now)
                except UnknownRegion:
                    continue

    def to_json(self) -> list[dict[str, Any]]:
        """Per artifact name: the latest digest, its source, and which region holds what."""
        catalog = self.registry.artifacts()
        names = set(catalog)
        for rec in self.registry.records():
            names.update(rec.artifacts)
        out: list[dict[str, Any]] = []
        for name in sorted(names):
            info = catalog.get(name)
            latest = info.sha256 if info is not None else None
            out.append(
                {
                    "name": name,
                    "sha256": latest,
                    "source": info.source if info is not None else None,
                    "read_at": info.read_at if info is not None else None,
                    "regions": [
                        {
                            "region": rec.config.id,
                            "sha256": rec.artifacts[name],
                            "latest": rec.artifacts[name] == latest,
                        }
                        for rec in self.registry.records()
                        if name in rec.artifacts
                    ],
                }
            )
        return out

    async def save(self, *, strict: bool = False) -> None:
        regions: dict[str, Any] = {}
        for rec in self.registry.records():
            if rec.artifacts:
                regions[rec.config.id] = {
                    "endpoint": rec.config.endpoint.url,
                    "artifacts": dict(rec.artifacts),
                }
        catalog = {
            name: {"sha256": info.sha256, "source": info.source, "read_at": info.read_at}
            for name, info in self.registry.artifacts().items()
        }
        try:
            await self.store.write("artifacts", {"regions": regions, "catalog": catalog})
        except Exception as exc:  # the store's write error: routing already uses the copy
            if strict:
                raise
            log.error("artifact inventory not saved: %s", exc)
