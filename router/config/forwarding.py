"""The config sections that shape how the proxy forwards one request (CONTRACT section 3):
``retries``, ``timeouts``, ``hedging``, ``http2``, ``limits`` and ``response_headers``.

Each takes its section's ``Fields`` and returns the frozen section, with every error
collected under its path; ``router.config.sections.build_config`` calls them in contract
order.
"""

from __future__ import annotations

import re

from router.config.model import (
    RETRY_CONDITIONS,
    HedgingConfig,
    Http2Config,
    LimitsConfig,
    ResponseHeadersConfig,
    RetriesConfig,
    TimeoutsConfig,
)
from router.config.units import is_number, show
from router.config.validate import FieldError, Fields, as_duration

_RETRY_STATUS = re.compile(r"[45]\d\d")


def retries_section(f: Fields) -> RetriesConfig:
    d = RetriesConfig()
    with f:
        conditions, statuses = set(d.on_conditions), set(d.on_statuses)
        if f.has("on"):
            conditions, statuses = set(), set()
        for path, item in f.items("on"):
            if isinstance(item, str) and item in RETRY_CONDITIONS:
                conditions.add(item)
            elif (is_number(item) or isinstance(item, str)) and _RETRY_STATUS.fullmatch(str(item)):
                statuses.add(int(str(item)))
            else:
                message = f"expected {', '.join(RETRY_CONDITIONS)} or a status 400..599"
                f.errors.append(FieldError(path, f"{message}, got {show(item)}"))
        rc = RetriesConfig(
            max_retries=f.integer("max_retries", d.max_retries, lo=0, hi=10),
            on_conditions=frozenset(conditions),
            on_statuses=frozenset(statuses),
            budget_percent=f.percent("budget_percent", d.budget_percent),
            min_concurrent=f.integer("min_concurrent", d.min_concurrent, lo=0),
            buffer_body_max_bytes=f.size("buffer_body_max", d.buffer_body_max_bytes),
            backoff_base_s=f.duration("backoff_base", d.backoff_base_s, positive=False),
            backoff_max_s=f.duration("backoff_max", d.backoff_max_s, positive=False),
        )
    if f.clean and rc.backoff_max_s < rc.backoff_base_s:
        f.error("backoff_max", "must not be shorter than backoff_base")
    return rc


def response_headers_section(f: Fields) -> ResponseHeadersConfig:
    d = ResponseHeadersConfig()
    with f:
        return ResponseHeadersConfig(
            region=f.flag("region", d.region), request_id=f.flag("request_id", d.request_id)
        )


def timeouts_section(f: Fields) -> TimeoutsConfig:
    d = TimeoutsConfig()
    with f:
        tc = TimeoutsConfig(
            connect_s=f.duration("connect", d.connect_s),
            response_headers_s=f.duration("response_headers", d.response_headers_s),
            idle_s=f.duration("idle", d.idle_s),
            per_try_s=f.duration("per_try", d.per_try_s, positive=False),
        )
    if f.clean and tc.per_try_s >= tc.response_headers_s:
        f.error("per_try", "must be shorter than response_headers (0 turns it off)")
    return tc


def _hedge_delay(value: object) -> float | None:
    if value == "auto":
        return None
    try:
        return as_duration(positive=True)(value)
    except ValueError:
        raise ValueError(f'expected "auto" or a duration > 0, got {show(value)}') from None


def hedging_section(f: Fields) -> HedgingConfig:
    d = HedgingConfig()
    with f:
        return HedgingConfig(
            enabled=f.flag("enabled", d.enabled),
            delay_s=f.get("delay", _hedge_delay, d.delay_s),
            max_extra=f.integer("max_extra", d.max_extra, lo=1, hi=4),
            budget_percent=f.percent("budget_percent", d.budget_percent),
        )


def http2_section(f: Fields) -> Http2Config:
    d = Http2Config()
    with f:
        return Http2Config(
            enabled=f.flag("enabled", d.enabled),
            max_concurrent_streams=f.integer(
                "max_concurrent_streams", d.max_concurrent_streams, lo=1, hi=10000
            ),
        )


def limits_section(f: Fields) -> LimitsConfig:
    d = LimitsConfig()
    with f:
        return LimitsConfig(
            max_body_bytes=f.size("max_body", d.max_body_bytes, positive=True),
            max_header_bytes=f.size("max_header_bytes", d.max_header_bytes, positive=True),
        )
