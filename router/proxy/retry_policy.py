"""The retry policy: built once per config, frozen, and only pure decisions.

``retries.py`` applies it to an exchange (counting, scheduling, the error when it says no);
this module says yes or no from numbers alone, so every rule is testable without a socket
and a reload swaps the whole policy at once (``ProxyCore.apply_config``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from router.config.model import RetriesConfig

# Failures where the request never reached a region's application: always safe to re-send.
CONNECT_FAILURES = frozenset({"connect-failure", "connect-timeout"})


def condition_of(kind: str) -> str:
    """The retry condition (and metric reason) of a failure kind: ``connect-*`` are one."""
    return "connect-failure" if kind.startswith("connect") else kind


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int
    conditions: frozenset[str]  # failure kinds retried once the request was sent
    statuses: frozenset[int]  # region answers retried (502, 503, 504 by default)
    budget_fraction: float  # retries in flight may be this share of requests in flight ...
    min_concurrent: int  # ... or this many, whichever is more
    buffer_body_max_bytes: int  # a body up to this size is kept for a retry
    backoff_base_s: float
    backoff_max_s: float

    @classmethod
    def from_config(cls, cfg: RetriesConfig) -> RetryPolicy:
        return cls(
            max_retries=cfg.max_retries,
            conditions=cfg.on_conditions,
            statuses=cfg.on_statuses,
            budget_fraction=cfg.budget_percent / 100.0,
            min_concurrent=cfg.min_concurrent,
            buffer_body_max_bytes=cfg.buffer_body_max_bytes,
            backoff_base_s=cfg.backoff_base_s,
            backoff_max_s=cfg.backoff_max_s,
        )

    def has_attempts_left(self, attempts: int) -> bool:
        """``attempts`` tries made so far (the first included)."""
        return attempts <= self.max_retries

    def safe_to_resend(self, idempotent: bool, reason: str) -> bool:
        """A request that may have reached a region is re-sent only when idempotent."""
        return idempotent or reason in CONNECT_FAILURES

    def retries_status(self, status: int) -> bool:
        return status in self.statuses

    def failure_reason(self, kind: str, *, sent: bool, stale: bool) -> str | None:
        """The retry reason for a failed try, or None when this kind is not retried.

        A try whose bytes no region read (not sent, or a pooled connection found dead) is
        always retried, as a connect failure; otherwise the kind must be a configured
        condition (``connect-*`` kinds count as ``connect-failure``).
        """
        if not sent or stale:
            return "connect-failure"
        condition = condition_of(kind)
        return condition if condition in self.conditions else None

    def budget_allows(self, retries_active: int, inflight: int) -> bool:
        """One more budgeted retry fits: Envoy's and Finagle's retry budget."""
        return retries_active < max(self.min_concurrent, self.budget_fraction * inflight)

    def backoff_cap_s(self, attempts: int) -> float:
        """Full jitter draws the delay from [0, cap): exponential in the attempts, capped."""
        return min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (attempts - 1))

    def keeps_body(self, body_bytes: int) -> bool:
        return body_bytes <= self.buffer_body_max_bytes


def retry_after_seconds(value: bytes, wall: float | None = None) -> float | None:
    """Seconds from a Retry-After value: delta-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    text = value.strip().decode("latin-1")
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    now = time.time() if wall is None else wall
    return max(0.0, when.timestamp() - now)
