"""The per-region pool of keep-alive upstream connections, and how a connection is opened.

Idle connections wait per endpoint address (LIFO, so warm connections are reused first);
a connection is opened in one place (``Pool.connect``, through ``connect_first``) and closed
in one place (``Pool.close`` or its sweep). HTTP/2 regions open theirs through
``connect_first`` too (router/proxy/h2upstream.py).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence
from functools import partial
from typing import TypeVar

from router.config.loader import Endpoint
from router.proxy.dns import Resolver
from router.proxy.upstream import UpstreamConnection

P = TypeVar("P", bound=asyncio.Protocol)


class Pool:
    """Idle keep-alive connections per endpoint address; covers any client concurrency.

    Each request takes the next address of its endpoint's DNS answer (``Resolver.pick``), so
    every address gets traffic, and reuses an idle connection to that address. A connection
    to an address that left the answer, or older than ``dns.max_connection_age``, is closed
    instead of reused (idle ones at once, busy ones when their request ends).
    """

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        idle_timeout_s: float,
        dns: Resolver,
        max_age_s: float,
        max_idle: int = 1024,
    ):
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.dns = dns
        self.max_age_s = max_age_s
        self.max_idle = max_idle
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._all: set[UpstreamConnection] = set()
        self._ssl: dict[str, ssl.SSLContext] = {}
        dns.listeners.append(self._addresses_changed)

    def acquire_idle(self, endpoint: Endpoint) -> UpstreamConnection | None:
        host = endpoint.host
        address = self.dns.pick(host, advance=False)
        if address is None:
            return None  # not resolved yet: connect() waits for the answer
        idle = self._idle.get(f"{endpoint.url} {address}")
        while idle:
            conn = idle.pop()
            if conn.usable():
                conn.reused = True
                self.dns.advance(host)
                return conn
        return None  # connect() takes this turn's address

    async def connect(self, endpoint: Endpoint, ca_file: str | None) -> UpstreamConnection:
        """A new connection to the endpoint's next address (resolving it first if needed)."""
        ctx = self._ssl_context(endpoint, ca_file) if endpoint.scheme == "https" else None
        host = endpoint.host

        async def open_one() -> UpstreamConnection:
            first = self.dns.pick(host) or await self.dns.resolve(host)
            current = self.dns.current(host) or (first,)
            # The address in turn first, then the others (as a connect by name would):
            # "localhost" is often ::1 and 127.0.0.1 with the region on one of them.
            i = current.index(first) if first in current else 0
            return await connect_first(
                lambda address: UpstreamConnection(
                    f"{endpoint.url} {address}", host, address, self._forget
                ),
                current[i:] + current[:i],
                endpoint.port,
                ctx,
                host,
            )

        conn = await asyncio.wait_for(open_one(), self.connect_timeout_s)
        self._all.add(conn)
        return conn

    def release(self, conn: UpstreamConnection, now: float) -> None:
        if conn.closed:
            return
        if self.outlived(conn.host, conn.address, conn.born, now):
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = now
        if conn.transport is not None:
            # A client that stopped taking the response may have paused this connection's
            # reads as the response ended; idle, it must read (the region's close), and the
            # next exchange must get its answer.
            conn.transport.resume_reading()
        idle.append(conn)

    def outlived(self, host: str, address: str, born: float, now: float) -> bool:
        """A connection to be closed rather than reused, HTTP/1.1 or HTTP/2: older than
        ``dns.max_connection_age``, or to an address that left ``host``'s answer."""
        if now - born > self.max_age_s:
            return True
        current = self.dns.current(host)
        return current is not None and address not in current

    def _addresses_changed(self, host: str, addresses: tuple[str, ...]) -> None:
        """Idle connections to addresses that left the answer close now."""
        for idle in self._idle.values():
            gone = [c for c in idle if c.host == host and c.address not in addresses]
            for conn in gone:
                idle.remove(conn)
                conn.close()

    def _forget(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle past the idle timeout or older than the maximum age."""
        limit = now - self.idle_timeout_s
        born_limit = now - self.max_age_s
        for idle in self._idle.values():
            while idle and idle[0].idle_since < limit:
                idle.pop(0).close()
            old = [c for c in idle if c.born < born_limit]
            for conn in old:
                idle.remove(conn)
                conn.close()

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()

    def counts(self) -> dict[str, int]:
        return {key: len(conns) for key, conns in self._idle.items()}

    def _ssl_context(self, endpoint: Endpoint, ca_file: str | None) -> ssl.SSLContext:
        ctx = self._ssl.get(endpoint.url)
        if ctx is None:
            ctx = ssl.create_default_context(cafile=ca_file)
            ctx.set_alpn_protocols(["http/1.1"])
            self._ssl[endpoint.url] = ctx
        return ctx

    def __repr__(self) -> str:
        idle = sum(len(v) for v in self._idle.values())
        return f"<Pool connections={len(self._all)} idle={idle}>"


async def connect_first(
    protocol: Callable[[str], P],
    addresses: Sequence[str],
    port: int,
    ctx: ssl.SSLContext | None,
    host: str,
) -> P:
    """The first of ``addresses`` that accepts, in order, as a connect by name would:
    "localhost" is often ::1 and 127.0.0.1 with the server on one of them. A refused or
    unreachable address gives way to the next; a TLS failure is final."""
    loop = asyncio.get_running_loop()
    last: OSError | None = None
    for address in addresses:
        try:
            _, conn = await loop.create_connection(
                partial(protocol, address),
                address,
                port,
                ssl=ctx,
                server_hostname=host if ctx is not None else None,
            )
        except OSError as exc:
            if isinstance(exc, ssl.SSLError):
                raise
            last = exc
            continue
        return conn
    assert last is not None
    raise last
