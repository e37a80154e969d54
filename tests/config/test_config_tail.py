"""Config of the tail-latency features: timeouts.per_try and the hedging section."""

from __future__ import annotations

import pytest

from router.config.loader import ConfigError, parse_config

BASE = "regions: [{id: a, endpoint: 'http://127.0.0.1:9'}]\n"


def _errors(extra: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + extra, {})
    return [str(e) for e in info.value.errors]


def test_defaults_are_off() -> None:
    cfg = parse_config(BASE, {})
    assert cfg.timeouts.per_try_s == 0.0
    h = cfg.hedging
    assert (h.enabled, h.delay_s, h.max_extra, h.budget_percent) == (False, None, 1, 5.0)


def test_values_parse() -> None:
    cfg = parse_config(
        BASE
        + "timeouts: {per_try: 250ms}\n"
        + "hedging: {enabled: true, delay: 40ms, max_extra: 2, budget_percent: 10%}\n",
        {},
    )
    assert cfg.timeouts.per_try_s == 0.25
    h = cfg.hedging
    assert (h.enabled, h.delay_s, h.max_extra, h.budget_percent) == (True, 0.04, 2, 10.0)
    assert parse_config(BASE + "hedging: {delay: auto}\n", {}).hedging.delay_s is None


def test_invalid_values_name_their_path() -> None:
    assert _errors("timeouts: {per_try: -1s}\n") == [
        "timeouts.per_try: expected a duration >= 0, got '-1s'"
    ]
    assert _errors("timeouts: {per_try: 30s, response_headers: 10s}\n") == [
        "timeouts.per_try: must be shorter than response_headers (0 turns it off)"
    ]
    assert _errors("hedging: {delay: soon}\n") == [
        "hedging.delay: expected \"auto\" or a duration > 0, got 'soon'"
    ]
    assert _errors("hedging: {max_extra: 0, budget: 5%}\n") == [
        "hedging.max_extra: expected an integer 1..4, got 0",
        "hedging.budget: unknown key (did you mean 'budget_percent'?)",
    ]
