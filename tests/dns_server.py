"""A DNS server for tests (dnslib on loopback UDP) and regions listening on several loopback
addresses with one port, so an endpoint name can point at any of them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord


@dataclass
class Zone:
    """What the server answers: name -> IPv4 addresses, one TTL; ``failing`` = SERVFAIL."""

    records: dict[str, list[str]] = field(default_factory=dict)
    ttl: int = 60
    failing: bool = False
    queries: int = 0


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        zone = self.zone
        zone.queries += 1
        query = DNSRecord.parse(data)
        reply = query.reply()
        name = str(query.q.qname).rstrip(".").lower()
        if zone.failing:
            reply.header.rcode = RCODE.SERVFAIL
        elif name not in zone.records:
            reply.header.rcode = RCODE.NXDOMAIN
        elif query.q.qtype == QTYPE.A:
            for ip in zone.records[name]:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(ip), ttl=zone.ttl))
        elif query.q.qtype == QTYPE.AAAA:
            for ip in zone.records.get(name + "/v6", []):
                reply.add_answer(RR(query.q.qname, QTYPE.AAAA, rdata=AAAA(ip), ttl=zone.ttl))
        assert self.transport is not None
        self.transport.sendto(reply.pack(), addr)


@contextlib.asynccontextmanager
async def dns_server(zone: Zone) -> AsyncIterator[str]:
    """Serve ``zone`` on 127.0.0.1; yields ``"127.0.0.1:port"`` for ``dns.nameservers``."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _DnsProtocol(zone), local_addr=("127.0.0.1", 0)
    )
    try:
        yield f"127.0.0.1:{transport.get_extra_info('sockname')[1]}"
    finally:
        transport.close()


@dataclass
class MultiRegion:
    """One app on several loopback addresses, same port: counts requests per address."""

    port: int
    hits: Counter[str] = field(default_factory=Counter)  # local address -> requests
    probes: Counter[str] = field(default_factory=Counter)  # local address -> /health
    sites: dict[str, web.TCPSite] = field(default_factory=dict)

    def established(self, address: str) -> int:
        """Open TCP connections to address:port (from /proc/net/tcp; state 01)."""
        local = f"{socket.inet_aton(address)[::-1].hex().upper()}:{self.port:04X}"
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
        return sum(1 for row in rows if row.split()[1] == local and row.split()[3] == "01")


def _free_port(addresses: list[str]) -> int:
    """A port free on every address (the first address picks, the rest are checked)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for address in addresses[1:]:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                with socket.socket(family) as s:
                    s.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no common free port")


@contextlib.asynccontextmanager
async def multi_region(addresses: list[str]) -> AsyncIterator[MultiRegion]:
    """Listen on every address in ``addresses`` with one port."""
    region = MultiRegion(_free_port(addresses))

    def local(request: web.Request) -> str:
        assert request.transport is not None
        return str(request.transport.get_extra_info("sockname")[0])

    async def health(request: web.Request) -> web.Response:
        region.probes[local(request)] += 1
        return web.Response(text="ok")

    async def echo(request: web.Request) -> web.Response:
        address = local(request)
        region.hits[address] += 1
        response = web.json_response({"address": address})
        if request.query.get("close"):
            response.force_close()  # no keep-alive: every request is a new connection
        return response

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        for address in addresses:
            site = web.TCPSite(runner, address, region.port)
            await site.start()
            region.sites[address] = site
        yield region
    finally:
        await runner.cleanup()
