"""An h2c region (HTTP/2 with prior knowledge) on several loopback addresses with one port,
like ``dns_server.multi_region``: counts requests and probes per address, and keeps the
open and close time of every connection so tests can bound how long one lives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

from tests.dns_server import MultiRegion, _free_port


@dataclass
class Lifetime:
    address: str
    opened: float
    closed: float | None = None
    requests: int = 0  # streams other than health probes

    def age(self, now: float) -> float:
        return (self.closed if self.closed is not None else now) - self.opened


@dataclass
class H2MultiRegion(MultiRegion):
    connections: list[Lifetime] = field(default_factory=list)


class _H2Server(asyncio.Protocol):
    """Answers every stream at once: /health ``ok``, anything else ``{"address": ...}``."""

    def __init__(self, region: H2MultiRegion) -> None:
        self.region = region
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.transport: asyncio.Transport | None = None
        self.address = ""
        self.life: Lifetime | None = None
        self.paths: dict[int, str] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.address = str(transport.get_extra_info("sockname")[0])
        self.life = Lifetime(self.address, time.monotonic())
        self.region.connections.append(self.life)
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.paths[event.stream_id] = dict(event.headers)[":path"]
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._answer(event.stream_id)
        self.transport.write(self.conn.data_to_send())

    def _answer(self, stream_id: int) -> None:
        path = self.paths.pop(stream_id, "")
        if path == "/health":
            self.region.probes[self.address] += 1
            body = b"ok"
        else:
            self.region.hits[self.address] += 1
            if self.life is not None:
                self.life.requests += 1
            body = json.dumps({"address": self.address}).encode()
        head = [(":status", "200"), ("content-type", "application/json")]
        head.append(("content-length", str(len(body))))
        self.conn.send_headers(stream_id, head)
        self.conn.send_data(stream_id, body, end_stream=True)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.life is not None:
            self.life.closed = time.monotonic()


@contextlib.asynccontextmanager
async def multi_region_h2(addresses: list[str]) -> AsyncIterator[H2MultiRegion]:
    """Listen (h2c) on every address in ``addresses`` with one port."""
    region = H2MultiRegion(_free_port(addresses))
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(lambda: _H2Server(region), address, region.port)
        for address in addresses
    ]
    try:
        yield region
    finally:
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
