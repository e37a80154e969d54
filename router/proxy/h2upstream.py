"""HTTP/2 to a region (``regions[].protocol: h2``): one multiplexed connection, a stream
per request, trailers end to end (what gRPC needs).

This module is the connection (``H2RegionConnection``: the jh2 state machine, frames to
and from its streams) and the pool (``H2Pool``: one connection per address of an
endpoint's DNS answer). Each request is an ``H2RegionStream``
(router/proxy/h2region_stream.py), which stands where an ``UpstreamConnection`` stands for
an exchange, so routing, retries, hedging and the client side (HTTP/1.1 or HTTP/2) are
unchanged. A stream is never pooled: its connection is.
"""

from __future__ import annotations

import asyncio
import ssl
from time import monotonic

from jh2.config import H2Configuration
from jh2.connection import H2Connection
from jh2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from jh2.exceptions import ProtocolError, StreamClosedError

from router.config.loader import Endpoint
from router.proxy.h2region_stream import H2Carrier, H2RegionStream
from router.proxy.pool import Pool, connect_first
from router.proxy.upstream import UpstreamConnection


class H2RegionConnection(H2Carrier):
    """One HTTP/2 connection to a region address; streams are opened on it per request."""

    def __init__(self, key: str, host: str, address: str) -> None:
        self.key = key
        self.host = host
        self.address = address
        self.born = monotonic()
        self.transport: asyncio.Transport | None = None
        self.h2 = H2Connection(
            H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.streams: dict[int, H2RegionStream] = {}
        self.closed = False
        self.going_away = False
        self.paused = False

    def usable(self) -> bool:
        t = self.transport
        return not self.closed and not self.going_away and t is not None and not t.is_closing()

    def open_stream(self) -> H2RegionStream:
        stream = H2RegionStream(self, self.h2.get_next_available_stream_id())
        self.streams[stream.stream_id] = stream
        return stream

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(16 * 1024 * 1024 - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            self.flush()
            self.close()
            return
        for event in events:
            stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, ResponseReceived) and stream is not None:
                stream.on_head(event.headers, event.stream_ended is not None)
            elif isinstance(event, DataReceived):
                if stream is not None:
                    stream.on_data(event.data, event.flow_controlled_length)
                    if event.stream_ended is not None:
                        stream.on_end()
                elif event.flow_controlled_length:
                    self.acknowledge(event.stream_id, event.flow_controlled_length)
            elif isinstance(event, TrailersReceived) and stream is not None:
                stream.on_trailers(event.headers)
            elif isinstance(event, StreamEnded) and stream is not None:
                stream.on_end()
            elif isinstance(event, StreamReset) and stream is not None:
                stream.on_reset()
            elif isinstance(event, WindowUpdated):
                for waiting in list(self.streams.values()):
                    if waiting.outbuf:
                        waiting.send_pending()
            elif isinstance(event, ConnectionTerminated):
                self.going_away = True
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            stream.on_reset()
        self.streams.clear()

    # -- from streams ----------------------------------------------------------------------

    def flush(self) -> None:
        if self.transport is not None and not self.closed:
            out = self.h2.data_to_send()
            if out:
                self.transport.write(out)

    def acknowledge(self, stream_id: int, size: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except (ProtocolError, StreamClosedError):
            return

    def forget(self, stream: H2RegionStream) -> None:
        self.streams.pop(stream.stream_id, None)
        if self.going_away and not self.streams:
            self.close()  # replaced after the region's GOAWAY; its last stream is done

    def retire(self) -> None:
        """No new streams (DNS moved away, or too old); closes once its streams are done."""
        self.going_away = True
        if not self.streams:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class H2Pool:
    """HTTP/2 connections to h2 regions: one per address of an endpoint's DNS answer.

    It follows DNS as the HTTP/1.1 ``Pool`` does: each new stream takes the next address in
    turn (so every address gets traffic) on that address's connection, opened on first use.
    A connection to an address that left the answer, or older than
    ``dns.max_connection_age``, takes no new stream and closes once its streams end (at once
    when it has none), so a long stream is never cut.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool  # its resolver, connect timeout and max_age_s (reloads update it)
        self.conns: dict[str, H2RegionConnection] = {}  # "url address" -> the current one
        self.retiring: set[H2RegionConnection] = set()
        self._opening: dict[str, asyncio.Future[H2RegionConnection]] = {}
        self._ssl: dict[str, ssl.SSLContext] = {}
        pool.dns.listeners.append(self._addresses_changed)

    async def connect(self, endpoint: Endpoint, ca_file: str | None) -> UpstreamConnection:
        """A new stream on the connection to the endpoint's next address (opened if needed)."""
        dns = self.pool.dns
        address = dns.pick(endpoint.host) or await dns.resolve(endpoint.host)
        key = f"{endpoint.url} {address}"
        conn = self.conns.get(key)
        if (
            conn is not None
            and conn.usable()
            and not self.pool.outlived(conn.host, conn.address, conn.born, monotonic())
        ):
            return conn.open_stream()
        opening = self._opening.get(key)
        if opening is None:
            opening = asyncio.ensure_future(self._open(endpoint, ca_file, address))
            self._opening[key] = opening
            try:
                conn = await asyncio.shield(opening)
            finally:
                self._opening.pop(key, None)
            # Keyed by the address reached and, when that address refused, by the one asked
            # for too: its next turn reuses this connection instead of opening another.
            for k in {key, conn.key}:
                old = self.conns.get(k)
                if old is not None and old is not conn:
                    self._retire(old)
                self.conns[k] = conn
        else:
            conn = await asyncio.shield(opening)
        return conn.open_stream()

    async def _open(
        self, endpoint: Endpoint, ca_file: str | None, address: str
    ) -> H2RegionConnection:
        ctx = None
        if endpoint.scheme == "https":
            ctx = self._ssl.get(endpoint.url)
            if ctx is None:
                ctx = ssl.create_default_context(cafile=ca_file)
                ctx.set_alpn_protocols(["h2"])
                self._ssl[endpoint.url] = ctx
        current = self.pool.dns.current(endpoint.host) or (address,)
        i = current.index(address) if address in current else 0
        # The address in turn first, then the others, as a connect by name would
        # ("localhost": ::1, 127.0.0.1); each connection is keyed by the address it reached.
        opening = connect_first(
            lambda a: H2RegionConnection(f"{endpoint.url} {a}", endpoint.host, a),
            current[i:] + current[:i],
            endpoint.port,
            ctx,
            endpoint.host,
        )
        return await asyncio.wait_for(opening, self.pool.connect_timeout_s)

    def _retire(self, conn: H2RegionConnection) -> None:
        for key in [k for k, c in self.conns.items() if c is conn]:
            del self.conns[key]
        conn.retire()
        if not conn.closed:
            self.retiring.add(conn)

    def _addresses_changed(self, host: str, addresses: tuple[str, ...]) -> None:
        for key, conn in list(self.conns.items()):
            if conn.host != host:
                continue
            if conn.address not in addresses:
                self._retire(conn)
            elif key.rpartition(" ")[2] not in addresses:
                self.conns.pop(key, None)  # the refused address it stood in for left

    def sweep(self, now: float) -> None:
        """Retire connections past the maximum age (the core's sweeper, every 100 ms)."""
        for key, conn in list(self.conns.items()):
            if conn.closed:
                self.conns.pop(key, None)
            elif now - conn.born > self.pool.max_age_s:
                self._retire(conn)
        self.retiring = {c for c in self.retiring if not c.closed}

    def close(self) -> None:
        for conn in {*self.conns.values(), *self.retiring}:
            conn.close()
        self.conns.clear()
        self.retiring.clear()
