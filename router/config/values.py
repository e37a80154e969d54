"""Parsers for the config's structured values: endpoints, listen addresses, status ranges.

Each takes a raw YAML/JSON value and returns the typed one or raises ``ValueError`` with a
message; ``Fields.get`` adds the field path. The admin API uses them for request bodies too.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal, get_args
from urllib.parse import urlsplit

from router.config.model import Endpoint, HostPort, StrategyName
from router.config.units import parse_percent, show
from router.config.validate import as_choice, as_float, as_str

REGION_ID = re.compile(r"[a-z0-9-]{1,63}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: header and cookie names
_HOSTNAME = re.compile(r"[a-z0-9_.-]+")
_ROUTE_HOST = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_HOSTPORT = re.compile(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^:\[\]\s]*):(\d{1,5})")
_STATUS = re.compile(r"(\d{3})(?:\s*-\s*(\d{3}))?")

STRATEGY_CHOICES: tuple[StrategyName, ...] = get_args(StrategyName)
BACKEND_CHOICES: tuple[Literal["file", "redis"], ...] = ("file", "redis")
VERSION_CHOICES: tuple[Literal["latest", "any"], ...] = ("latest", "any")
FALLBACK_CHOICES: tuple[Literal["503", "source"], ...] = ("503", "source")


def parse_region_id(value: object) -> str:
    text = as_str(nonempty=True)(value)
    if not REGION_ID.fullmatch(text):
        raise ValueError(f"must match [a-z0-9-]{{1,63}}, got {show(value)}")
    return text


def parse_endpoint(value: object) -> Endpoint:
    """An http(s) base URL with a host and no query, fragment or credentials."""
    bad = f"must be an http(s) URL, got {show(value)}"
    if not isinstance(value, str):
        raise ValueError(bad)
    text = value.strip()
    try:
        parts = urlsplit(text)
        explicit_port = parts.port
    except ValueError as exc:
        raise ValueError(f"{bad} ({exc})") from None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if scheme not in ("http", "https") or not host:
        raise ValueError(bad)
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ValueError(f"must not have a query or fragment, got {show(value)}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials (user:password@)")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 host in {show(value)}") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"invalid host in {show(value)}")
    if explicit_port == 0:
        raise ValueError(f"port must be 1..65535, got {show(value)}")
    default_port = 443 if scheme == "https" else 80
    port = default_port if explicit_port is None else explicit_port
    base_path = parts.path.rstrip("/")
    netloc = f"[{host}]" if ":" in host else host
    netloc = netloc if port == default_port else f"{netloc}:{port}"
    return Endpoint(
        url=f"{scheme}://{netloc}{base_path}",
        scheme="https" if scheme == "https" else "http",
        host=host,
        port=port,
        base_path=base_path,
    )


def parse_http_url(value: object) -> str:
    """An http(s) URL (a query is allowed), kept as written."""
    if not isinstance(value, str):
        raise ValueError(f"must be an http(s) URL, got {show(value)}")
    parse_endpoint(value.split("?", 1)[0].split("#", 1)[0])
    return value.strip()


def parse_hostport(value: object) -> HostPort:
    """``host:port``, ``[::1]:port`` or ``:port`` (all interfaces); port 0 = ephemeral."""
    match = _HOSTPORT.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f'expected "host:port" or "[ipv6]:port", got {show(value)}')
    v6, v6_port, host, port_text = match.groups()
    port = int(v6_port or port_text)
    if port > 65535:
        raise ValueError(f"port must be 0..65535, got {show(value)}")
    if v6 is not None:
        try:
            ipaddress.IPv6Address(v6)
        except ValueError:
            raise ValueError(f"invalid IPv6 address in {show(value)}") from None
        return HostPort(host=v6, port=port)
    return HostPort(host=host or "0.0.0.0", port=port)


def parse_status_ranges(value: object) -> tuple[tuple[int, int], ...]:
    """``"200-399"``, ``"200,204"``, ``200`` or a list of those, as sorted inclusive ranges."""
    bad = f'expected HTTP status codes like "200-399", "200,204" or 200, got {show(value)}'
    items = value if isinstance(value, list) else [value]
    ranges: set[tuple[int, int]] = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            pieces: list[str] = [str(item)]
        elif isinstance(item, str):
            pieces = [p.strip() for p in item.split(",")]
        else:
            raise ValueError(bad)
        for piece in pieces:
            match = _STATUS.fullmatch(piece)
            if match is None:
                raise ValueError(bad)
            lo = int(match[1])
            hi = int(match[2] or match[1])
            if not 100 <= lo <= hi <= 599:
                raise ValueError(f"status ranges must lie in 100..599, low to high, got {piece!r}")
            ranges.add((lo, hi))
    if not ranges:
        raise ValueError(bad)
    return tuple(sorted(ranges))


def parse_path(value: object) -> str:
    text = as_str(nonempty=True)(value)
    if not text.startswith("/"):
        raise ValueError(f'must start with "/", got {show(value)}')
    return text


def parse_fraction(value: object) -> float:
    """``0.05`` or ``5%``."""
    if isinstance(value, str) and value.strip().endswith("%"):
        return parse_percent(value) / 100.0
    try:
        return as_float(lo=0.0, hi=1.0)(value)
    except ValueError:
        message = f"expected a fraction 0..1 or a percentage like 5%, got {show(value)}"
        raise ValueError(message) from None


def parse_quorum(value: object) -> float | None:
    if value == "majority":
        return None
    try:
        percent = parse_percent(value)
    except ValueError:
        percent = 0.0
    if percent <= 0:
        raise ValueError(f"expected majority or a percentage > 0 like 60%, got {show(value)}")
    return percent


def parse_token(value: object) -> str:
    text = as_str(nonempty=True)(value)
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"must be a valid header/cookie name, got {show(value)}")
    return text


def parse_route_host(value: object) -> str:
    text = as_str(nonempty=True)(value).lower()
    if not _ROUTE_HOST.fullmatch(text):
        raise ValueError(
            f'expected a host name like "api.example.com" or "*.example.com", got {show(value)}'
        )
    return text


def parse_artifact_fallback(value: object) -> Literal["503", "source"]:
    return as_choice(FALLBACK_CHOICES)("503" if value == 503 else value)
