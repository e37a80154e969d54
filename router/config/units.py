"""Parsers for the config's unit syntax: durations (``250ms``), sizes (``1MiB``), percentages.

Each parser takes a YAML/JSON scalar and returns plain numbers (float seconds, int bytes,
float 0..100), raising ``ValueError`` with a message that names the accepted syntax.
"""

from __future__ import annotations

import math
import re
from typing import TypeGuard

_DURATION_UNITS = {"us": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:us|ms|s|m|h))+")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")

_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_DECIMAL_SIZE_UNITS = {"k", "kb", "m", "mb", "g", "gb", "t", "tb"}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)")


def is_number(value: object) -> TypeGuard[int | float]:
    """True for int and float, but not bool (which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def show(value: object) -> str:
    """A short rendering of a user-supplied value for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return repr(text)
    if is_number(value):
        return str(value)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def parse_duration(value: object) -> float:
    """``200us``, ``250ms``, ``5s``, ``2m``, ``1h``, ``1m30s``, or a bare number of seconds.
    May be < 0."""
    if is_number(value):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-").strip()
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        elif _DURATION.fullmatch(body):
            seconds = sign * sum(
                float(num) * _DURATION_UNITS[unit] for num, unit in _DURATION_PART.findall(body)
            )
        else:
            raise ValueError(f"expected a duration like 250ms, 5s, 2m, 1h, got {show(value)}")
    else:
        raise ValueError(f"expected a duration like 250ms, 5s, 2m, 1h, got {show(value)}")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {show(value)}")
    return seconds


def parse_size(value: object) -> int:
    """``512B``, ``16KiB``, ``1MiB``, ``2GiB`` (binary units), or a bare number of bytes."""
    if is_number(value):
        number = float(value)
        if number < 0 or not math.isfinite(number) or number != int(number):
            raise ValueError(f"expected a whole number of bytes >= 0, got {show(value)}")
        return int(number)
    if isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if match is not None:
            number_text, unit = match.groups()
            factor = _SIZE_UNITS.get(unit.lower())
            if factor is not None:
                return round(float(number_text) * factor)
            if unit.lower() in _DECIMAL_SIZE_UNITS:
                hint = f"{number_text}{unit[0].upper()}iB"
                raise ValueError(f"sizes use binary units (KiB, MiB, GiB): write {hint!r}")
    raise ValueError(f"expected a size like 512B, 16KiB, 1MiB, 2GiB, got {show(value)}")


def parse_percent(value: object) -> float:
    """``50%`` or a bare number, both in 0..100."""
    percent: float | None = None
    if is_number(value):
        percent = float(value)
    elif isinstance(value, str):
        text = value.strip()
        text = text[:-1].rstrip() if text.endswith("%") else text
        if _NUMBER.fullmatch(text):
            percent = float(text)
    if percent is None or not 0.0 <= percent <= 100.0:
        raise ValueError(f"expected a percentage 0..100 like 50%, got {show(value)}")
    return percent
