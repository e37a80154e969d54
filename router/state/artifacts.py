"""Replication-aware routing: which regions may serve a route that requires an artifact.

Replication records a verified copy as ``name -> sha256`` on the target region and keeps,
per name, an ``ArtifactInfo`` (the latest verified digest, the region the latest job read
from). ``artifact_candidates`` is the pure rule the registry applies while it builds a
route's plan: once per snapshot, never per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from router.config.loader import RouteConfig
from router.state.snapshot import ArtifactInfo, RegionView


@dataclass(frozen=True, slots=True)
class ArtifactChoice:
    """The regions a route with ``requires_artifact`` may use, and why."""

    regions: tuple[RegionView, ...]
    sha256: str | None  # the digest a region must hold; None: any digest (or none known)
    fallback: str | None  # the source region added by ``artifact_fallback: source``


def artifact_candidates(
    route: RouteConfig,
    regions: tuple[RegionView, ...],
    catalog: Mapping[str, ArtifactInfo],
) -> ArtifactChoice:
    """Narrow a route's regions to the holders of its required artifact.

    ``artifact_version: latest`` keeps regions holding the latest verified digest of the
    name; ``any`` keeps regions holding any verified digest. When none of the holders is
    eligible, ``artifact_fallback: source`` adds the region the latest job copied from (if
    the route names it); ``"503"`` leaves the holders alone, so with none the proxy answers
    503 ``no_eligible_region``.
    """
    name = route.requires_artifact
    assert name is not None
    info = catalog.get(name)
    if route.artifact_version == "latest":
        want = info.sha256 if info is not None else None
        holders = (
            tuple(r for r in regions if r.artifacts.get(name) == want) if want is not None else ()
        )
    else:
        want = None
        holders = tuple(r for r in regions if name in r.artifacts)
    if route.artifact_fallback == "source" and not any(r.eligible for r in holders):
        source = info.source if info is not None else None
        for r in regions:
            if r.id == source and r not in holders:
                return ArtifactChoice(regions=(*holders, r), sha256=want, fallback=r.id)
    return ArtifactChoice(regions=holders, sha256=want, fallback=None)
