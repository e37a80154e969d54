"""artifact_candidates: which regions a route that requires an artifact may use (pure)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from router.config.loader import Endpoint, RouteConfig, RouteMatch
from router.state.artifacts import artifact_candidates
from router.state.snapshot import ArtifactInfo, RegionState, RegionView

OLD, NEW = "a" * 64, "b" * 64


def region(
    rid: str, artifacts: dict[str, str] | None = None, state: RegionState = RegionState.HEALTHY
) -> RegionView:
    return RegionView(
        index=0,
        id=rid,
        name=rid,
        endpoint=Endpoint(url=f"http://{rid}", scheme="http", host=rid, port=80, base_path=""),
        weight=100,
        priority=0,
        labels=MappingProxyType({}),
        max_inflight=0,
        ca_file=None,
        metrics_path=None,
        source="config",
        state=state,
        effective_weight=100.0,
        artifacts=MappingProxyType(artifacts or {}),
    )


def route(**kw: Any) -> RouteConfig:
    return RouteConfig(match=RouteMatch(path_prefix="/"), requires_artifact="m", **kw)


CATALOG = {"m": ArtifactInfo(name="m", sha256=NEW, source="src", read_at=2.0)}
SRC, A, B, C = region("src"), region("a", {"m": OLD}), region("b", {"m": NEW}), region("c")


def ids(regions: tuple[RegionView, ...]) -> list[str]:
    return [r.id for r in regions]


def test_latest_keeps_only_holders_of_the_newest_digest() -> None:
    choice = artifact_candidates(route(), (SRC, A, B, C), CATALOG)
    assert ids(choice.regions) == ["b"]
    assert choice.sha256 == NEW and choice.fallback is None


def test_any_keeps_every_holder() -> None:
    choice = artifact_candidates(route(artifact_version="any"), (SRC, A, B, C), CATALOG)
    assert ids(choice.regions) == ["a", "b"] and choice.sha256 is None


def test_nothing_verified_yet_means_no_candidate_with_503() -> None:
    assert artifact_candidates(route(), (SRC, A, C), {}).regions == ()
    assert artifact_candidates(route(), (SRC, C), CATALOG).regions == ()


def test_source_fallback_only_when_no_holder_is_eligible() -> None:
    down = region("b", {"m": NEW}, RegionState.UNHEALTHY)
    choice = artifact_candidates(route(artifact_fallback="source"), (SRC, A, down), CATALOG)
    assert ids(choice.regions) == ["b", "src"] and choice.fallback == "src"
    choice = artifact_candidates(route(artifact_fallback="source"), (SRC, B), CATALOG)
    assert ids(choice.regions) == ["b"] and choice.fallback is None
    # the source must be one of the route's regions
    assert artifact_candidates(route(artifact_fallback="source"), (A,), CATALOG).regions == ()
