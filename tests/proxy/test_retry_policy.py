"""The retry policy's decisions, from the config a user writes (no sockets needed)."""

from __future__ import annotations

import pytest

from router.proxy.retry_policy import RetryPolicy
from tests.conftest import make_config

REGION = [{"id": "r1", "endpoint": "http://127.0.0.1:9001"}]


def policy(**retries: object) -> RetryPolicy:
    return RetryPolicy.from_config(make_config(REGION, retries=retries).retries)


def test_defaults_retry_twice_on_gateway_errors_within_a_20_percent_budget() -> None:
    p = policy()
    assert [p.has_attempts_left(n) for n in (1, 2, 3)] == [True, True, False]
    assert [p.retries_status(s) for s in (500, 502, 503, 504)] == [False, True, True, True]
    # 20% of 100 in flight: the 20th concurrent retry is refused; never fewer than 3.
    assert p.budget_allows(19, 100) and not p.budget_allows(20, 100)
    assert p.budget_allows(2, 0) and not p.budget_allows(3, 0)


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    p = policy(backoff_base="10ms", backoff_max="50ms")
    assert [round(p.backoff_cap_s(n), 3) for n in (1, 2, 3, 4, 5)] == [
        0.01,
        0.02,
        0.04,
        0.05,
        0.05,
    ]


@pytest.mark.parametrize(
    ("kind", "sent", "stale", "reason"),
    [
        ("reset", False, False, "connect-failure"),  # nothing reached the region
        ("reset", True, True, "connect-failure"),  # a pooled connection found dead
        ("connect-timeout", True, False, "connect-failure"),
        ("reset", True, False, "reset"),
        ("timeout", True, False, None),  # not in this `on:` list
    ],
)
def test_which_failures_are_retried(kind: str, sent: bool, stale: bool, reason: str | None) -> None:
    p = policy(on=["connect-failure", "reset"])
    assert p.failure_reason(kind, sent=sent, stale=stale) == reason


def test_only_idempotent_requests_are_resent_once_a_region_may_have_seen_them() -> None:
    p = policy()
    assert p.safe_to_resend(False, "connect-failure")
    assert not p.safe_to_resend(False, "reset")
    assert p.safe_to_resend(True, "reset")


def test_bodies_are_kept_for_a_retry_up_to_buffer_body_max() -> None:
    p = policy(buffer_body_max="1KiB")
    assert p.keeps_body(1024) and not p.keeps_body(1025)
