"""Endpoint host names to addresses: resolved with aiodns, kept fresh, stale-if-error.

A name is resolved when first needed and then re-resolved in the background every
``dns.refresh`` (sooner when the answer's TTL is shorter, never more often than once a
second). Every address of the answer is handed out in turn. A failed lookup keeps the last
good addresses and marks the name stale; a name nobody asked for in a while stops being
refreshed. IP literals never touch DNS. Listeners (the upstream pool) hear of every change.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiodns

from router.config.loader import DnsConfig
from router.errors import ResolveError

log = logging.getLogger("router.proxy.dns")

MIN_INTERVAL_S = 1.0  # a TTL of 0 or 1 must not turn into a query storm
UNUSED_REFRESHES = 10  # refresh rounds without a use before a name is dropped


@dataclass(slots=True)
class HostEntry:
    host: str
    addresses: tuple[str, ...] = ()
    next_index: int = 0
    stale: bool = False
    error: str | None = None
    resolved_at: float = 0.0  # wall clock of the last good answer
    ttl_s: float | None = None
    lookups_ok: int = 0
    lookups_failed: int = 0
    used_at: float = field(default_factory=time.monotonic)
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # first answer (or failure)
    task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "addresses": list(self.addresses),
            "stale": self.stale,
            "error": self.error,
            "resolved_at": self.resolved_at or None,
            "ttl_s": self.ttl_s,
        }


Listener = Callable[[str, tuple[str, ...]], None]  # (host, its new addresses)


class Resolver:
    """One per process: the proxy's pool and the health checks share its answers."""

    def __init__(self, config: DnsConfig) -> None:
        self.config = config
        self.entries: dict[str, HostEntry] = {}
        self.listeners: list[Listener] = []
        self.closed = False

    def apply_config(self, config: DnsConfig) -> None:
        self.config = config  # the next lookup uses the new servers

    # -- reads (synchronous: the hot path) ----------------------------------------------

    def pick(self, host: str, *, advance: bool = True) -> str | None:
        """The next address for ``host`` in turn; None until the name has an answer.

        ``advance=False`` only looks: the pool looks for an idle connection to the address
        first and takes the turn (``advance``) only when it uses one, so a request that
        must open a new connection does not skip an address.
        """
        entry = self.entries.get(host)
        if entry is None:
            if not _is_ip(host):
                return None
            entry = self.entries[host] = HostEntry(host, addresses=(host,))  # never refreshed
            entry.ready.set()
        addresses = entry.addresses
        entry.used_at = time.monotonic()
        if len(addresses) == 1:
            return addresses[0]
        if not addresses:
            return None
        i = entry.next_index
        if advance:
            entry.next_index = i + 1
        return addresses[i % len(addresses)]

    def advance(self, host: str) -> None:
        """Take the turn ``pick(host, advance=False)`` looked at."""
        entry = self.entries.get(host)
        if entry is not None:
            entry.next_index += 1

    def current(self, host: str) -> tuple[str, ...] | None:
        """The addresses now in the answer (None: not a tracked name)."""
        entry = self.entries.get(host)
        if entry is not None:
            return entry.addresses
        return (host,) if _is_ip(host) else None

    def status(self, host: str) -> dict[str, Any] | None:
        """What the region status shows for a name (None for IP literals and unused names)."""
        entry = self.entries.get(host)
        return entry.status() if entry is not None and entry.task is not None else None

    # -- resolution ----------------------------------------------------------------------

    async def resolve(self, host: str) -> str:
        """An address for ``host``, waiting for the first lookup; ResolveError without one."""
        address = self.pick(host)
        if address is not None:
            return address
        entry = self._track(host)
        await entry.ready.wait()
        address = self.pick(host)
        if address is None:
            raise ResolveError(f"cannot resolve {host!r}: {entry.error or 'no addresses'}")
        return address

    async def rotation(self, host: str) -> tuple[str, ...]:
        """Every current address of ``host``, starting with the next in turn (health checks)."""
        first = await self.resolve(host)
        addresses = self.current(host) or (first,)
        i = addresses.index(first) if first in addresses else 0
        return addresses[i:] + addresses[:i]

    def _track(self, host: str) -> HostEntry:
        entry = self.entries.get(host)
        if entry is None:
            entry = HostEntry(host)
            self.entries[host] = entry
        if entry.task is None and not self.closed:
            entry.task = asyncio.get_running_loop().create_task(
                self._refresh_loop(entry), name=f"dns {host}"
            )
        return entry

    async def _refresh_loop(self, entry: HostEntry) -> None:
        while True:
            delay = await self.refresh(entry)
            entry.ready.set()
            await asyncio.sleep(delay)
            idle_s = time.monotonic() - entry.used_at
            if idle_s > UNUSED_REFRESHES * self.config.refresh_s:
                self.entries.pop(entry.host, None)
                return

    async def refresh(self, entry: HostEntry) -> float:
        """One lookup; returns the seconds until the next one."""
        refresh_s = self.config.refresh_s
        try:
            addresses, ttl_s = await self._lookup(entry.host)
        except Exception as exc:  # any lookup failure: keep the last answer
            if not isinstance(exc, aiodns.error.DNSError | OSError | TimeoutError):
                log.exception("dns: unexpected error resolving %s", entry.host)
            entry.lookups_failed += 1
            entry.error = _error_text(exc)
            if entry.addresses and not entry.stale:
                log.warning(
                    "dns: lookup of %s failed (%s); keeping the last good addresses %s",
                    entry.host,
                    entry.error,
                    ", ".join(entry.addresses),
                )
            entry.stale = bool(entry.addresses)
            # Retry sooner than a full refresh: the addresses in use may be gone.
            return max(MIN_INTERVAL_S, min(refresh_s, 5.0))
        entry.lookups_ok += 1
        entry.stale = False
        entry.error = None
        entry.resolved_at = time.time()
        entry.ttl_s = ttl_s
        if addresses != entry.addresses:
            if entry.addresses:
                log.info(
                    "dns: %s now %s (was %s)",
                    entry.host,
                    ", ".join(addresses),
                    ", ".join(entry.addresses),
                )
            entry.addresses = addresses
            for listener in self.listeners:
                listener(entry.host, addresses)
        if ttl_s is not None and ttl_s > 0:
            return max(MIN_INTERVAL_S, min(refresh_s, ttl_s))
        return refresh_s

    async def _lookup(self, host: str) -> tuple[tuple[str, ...], float | None]:
        """Every address of the answer (IPv4 first, as most stacks prefer) and its TTL."""
        # A channel per lookup: c-ares caches answers for their TTL and pycares offers no
        # way to turn that off, so a long-lived channel would not see an answer change.
        servers = [_server_text(hp.host, hp.port) for hp in self.config.nameservers]
        resolver = aiodns.DNSResolver(nameservers=servers or None)
        # Not try/finally: mypyc (this module is compiled) re-raises a stale exception from
        # a `finally` that awaits; closing on both paths keeps it correct in both builds.
        try:
            result = await asyncio.wait_for(
                resolver.getaddrinfo(host, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM),
                10.0,
            )
        except BaseException:
            await resolver.close()
            raise
        await resolver.close()
        v4: list[str] = []
        v6: list[str] = []
        ttls: list[int] = []
        for node in result.nodes:
            raw = node.addr[0]
            address = raw.decode() if isinstance(raw, bytes) else str(raw)
            target = v6 if ":" in address else v4
            if address not in target:
                target.append(address)
            ttls.append(int(node.ttl))
        addresses = tuple(v4 + v6)
        if not addresses:
            raise ResolveError(f"no addresses for {host!r}")
        ttl_s = float(min(ttls)) if ttls and min(ttls) > 0 else None
        return addresses, ttl_s

    async def close(self) -> None:
        self.closed = True
        tasks = [e.task for e in self.entries.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __repr__(self) -> str:
        stale = sum(1 for e in self.entries.values() if e.stale)
        return f"<Resolver names={len(self.entries)} stale={stale}>"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _server_text(host: str, port: int) -> str:
    if port == 53:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, aiodns.error.DNSError) and len(exc.args) >= 2:
        return str(exc.args[1])
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
