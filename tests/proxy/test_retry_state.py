"""Retries choose from the routing state of the moment, and honour Retry-After dates."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from email.utils import format_datetime

from router.proxy.retry_policy import retry_after_seconds
from router.routing.routes import current_plan
from router.state.registry import Registry
from tests.conftest import make_config

WALL = 1_800_000_000.0


def _registry() -> Registry:
    config = make_config(
        [{"id": r, "endpoint": f"http://127.0.0.1:{9000 + i}"} for i, r in enumerate("abc")],
        routes=[{"match": {"path_prefix": "/api/"}, "regions": ["a", "b"]}],
    )
    reg = Registry(config, now=0.0)
    for r in "abc":
        reg.set_probe_verdict(r, True, 0.0, "ok", WALL)
    return reg


def _tier_regions(plan: object) -> set[str]:
    return {r.id for t in plan.tiers for r in t.regions}  # type: ignore[attr-defined]  # RoutePlan


def test_a_retry_sees_a_region_failed_over_after_the_request_arrived() -> None:
    reg = _registry()
    old = reg.snapshot()
    reg.set_manual("b", "failed_over", 1.0, WALL, "operator")
    new = reg.snapshot()
    assert "b" in _tier_regions(old.default_plan)
    assert _tier_regions(current_plan(old, new, old.default_plan)) == {"a", "c"}
    assert _tier_regions(current_plan(old, new, old.route_plans[0])) == {"a"}


def test_a_route_gone_in_a_reload_keeps_the_plan_the_request_had() -> None:
    reg = _registry()
    old = reg.snapshot()
    reg.apply_config(replace(reg.config, routes=()), 1.0)
    new = reg.snapshot()
    assert current_plan(old, new, old.route_plans[0]) is old.route_plans[0]


def test_retry_after_takes_seconds_and_http_dates() -> None:
    assert retry_after_seconds(b"120") == 120.0
    future = format_datetime(datetime.fromtimestamp(WALL + 30, UTC), usegmt=True).encode()
    assert retry_after_seconds(future, wall=WALL) == 30.0
    past = format_datetime(datetime.fromtimestamp(WALL - 30, UTC), usegmt=True).encode()
    assert retry_after_seconds(past, wall=WALL) == 0.0
    assert retry_after_seconds(b"soon") is None
    assert retry_after_seconds(b"-5") is None
