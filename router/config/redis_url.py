"""Where the Redis state store connects: one address, or Redis Sentinel for high availability.

``redis://`` / ``rediss://`` / ``unix://`` name one server. ``redis+sentinel://`` names the
sentinels and the service they watch, and the client asks them for the current master on
every new connection, so a Sentinel failover moves the router to the promoted replica:

    redis+sentinel://[:password@]host1:26379,host2:26379/<service>[/<db>]
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

SENTINEL_SCHEME = "redis+sentinel://"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Raises ValueError with a message saying what is wrong."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(f"expected {SENTINEL_SCHEME}..., got {url!r}")
    rest = url[len(SENTINEL_SCHEME) :]
    password = None
    if "@" in rest:
        auth, rest = rest.rsplit("@", 1)
        password = unquote(auth.split(":", 1)[1]) if ":" in auth else unquote(auth)
    hosts, _, path = rest.partition("/")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise ValueError("name the Sentinel service: redis+sentinel://host:26379/<service>")
    if len(parts) > 2:
        raise ValueError("expected redis+sentinel://hosts/<service>[/<db>]")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"database must be a number, got {parts[1]!r}")
        db = int(parts[1])
    sentinels = []
    for raw in hosts.split(","):
        item = raw.strip()
        if not item:
            raise ValueError("empty sentinel address")
        host, sep, port_text = item.rpartition(":")
        if not sep:
            host, port_text = item, str(DEFAULT_SENTINEL_PORT)
        host = host.strip("[]")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"expected host:port for a sentinel, got {item!r}")
        sentinels.append((host, int(port_text)))
    return SentinelTarget(tuple(sentinels), unquote(parts[0]), db, password)
