"""HTTP/2 to a region (``regions[].protocol: h2``): one multiplexed connection, a stream
per request, trailers end to end (what gRPC needs).

An ``H2RegionStream`` stands where an ``UpstreamConnection`` stands for an exchange: the
exchange writes the HTTP/1.1 request it builds for every region (head, body, chunked
trailers) and the stream re-reads it with httptools into HEADERS, DATA and trailing
HEADERS frames; the region's HEADERS, DATA and trailers come back as the same exchange
callbacks an HTTP/1.1 response makes. So routing, retries, hedging and the client side
(HTTP/1.1 or HTTP/2) are unchanged. A stream is never pooled: its connection is.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from functools import partial
from typing import Any

import httptools
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
from router.proxy.upstream import Pool, UpstreamConnection, connect_first

# Request fields HTTP/2 does not carry (RFC 9113 8.2.2); Host becomes :authority.
_NOT_FORWARDED = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)
_CANCEL = 0x8
# The region's response as the exchange expects an HTTP/1.1 one: framed to the end of the
# stream, which HTTP/1.1 calls chunked (dropped again before the client sees it).
_FRAMED = (b"transfer-encoding", b"chunked")


class H2RegionConnection(asyncio.Protocol):
    """One HTTP/2 connection to a region address; streams are opened on it per request."""

    def __init__(self, key: str, host: str, address: str) -> None:
        self.key = key
        self.host = host
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.h2: Any = H2Connection(
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

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class _StreamTransport(asyncio.Transport):
    """What an exchange pauses and resumes: the stream's receive window, not the socket."""

    def __init__(self, stream: H2RegionStream) -> None:
        super().__init__()
        self.stream = stream

    def pause_reading(self) -> None:
        self.stream.reading_paused = True

    def resume_reading(self) -> None:
        self.stream.resume()

    def is_closing(self) -> bool:
        return self.stream.closed


class _NoReuse:
    """The ``parser`` an exchange asks whether the connection may be pooled: never."""

    @staticmethod
    def should_keep_alive() -> bool:
        return False


class H2RegionStream(UpstreamConnection):
    """One request to an h2 region, in the place of an ``UpstreamConnection``."""

    def __init__(self, conn: H2RegionConnection, stream_id: int) -> None:
        super().__init__(conn.key, conn.host, conn.address, _ignore)
        self.born = float("-inf")  # Pool.release closes it (as a connection past max age)
        self.conn = conn
        self.stream_id = stream_id
        self.transport = _StreamTransport(self)
        self.request = httptools.HttpRequestParser(self)
        self.parser = _NoReuse()  # type: ignore[assignment]  # only should_keep_alive() is asked
        self.fields: list[tuple[bytes, bytes]] = []
        self.authority = b""
        self.url = b""
        self.sent_head = False
        self.in_trailers = False
        self.req_trailers: list[tuple[bytes, bytes]] = []
        self.outbuf: list[bytes] = []
        self.end_pending = False
        self.ended_out = False  # our END_STREAM is queued
        self.ended_in = False  # the region's END_STREAM arrived
        self.reading_paused = False
        self.unacked = 0

    # -- the exchange writes an HTTP/1.1 request -------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.request.feed_data(data)
        except httptools.HttpParserError:
            self.abort()

    def uncork(self) -> None:
        out, self.corked = self.corked, None
        for data in out or ():
            self.write(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if self.in_trailers:
            self.req_trailers.append((lname, value))
        elif lname == b"host":
            self.authority = value
        elif lname not in _NOT_FORWARDED:
            self.fields.append((lname, value))

    def on_headers_complete(self) -> None:
        self.in_trailers = True
        method = self.request.get_method()
        scheme = b"https" if self.key.startswith("https:") else b"http"
        head = [(b":method", method), (b":scheme", scheme), (b":authority", self.authority)]
        head.append((b":path", self.url))
        try:
            self.conn.h2.send_headers(self.stream_id, head + self.fields)
        except (ProtocolError, StreamClosedError):
            self.abort()
            return
        self.sent_head = True
        self.conn.flush()

    def on_body(self, body: bytes) -> None:
        self.outbuf.append(body)
        if len(self.outbuf) == 1:
            self.send_pending()

    def on_message_complete(self) -> None:
        self.end_pending = True
        self.send_pending()

    def send_pending(self) -> None:
        h2 = self.conn.h2
        try:
            window = h2.local_flow_control_window(self.stream_id)
            size = h2.max_outbound_frame_size
            while self.outbuf and window > 0:
                chunk = self.outbuf[0]
                n = min(len(chunk), window, size)
                h2.send_data(self.stream_id, chunk[:n])
                window -= n
                if n < len(chunk):
                    self.outbuf[0] = chunk[n:]
                else:
                    self.outbuf.pop(0)
            if not self.outbuf and self.end_pending and not self.ended_out:
                self.ended_out = True
                if self.req_trailers:
                    h2.send_headers(self.stream_id, self.req_trailers, end_stream=True)
                else:
                    h2.end_stream(self.stream_id)
        except (ProtocolError, StreamClosedError):
            self.outbuf.clear()
        self.conn.flush()

    # -- the region answers ----------------------------------------------------------------

    def on_head(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        ex = self.exchange
        if ex is None:
            return
        status = 0
        fields = []
        for name, value in headers:
            if name == b":status":
                status = int(value)
            elif name[:1] != b":":
                fields.append((name, value))
        if not ended:
            fields.append(_FRAMED)
        elif not any(name == b"content-length" for name, _ in fields):
            # A head that ends the stream (gRPC's trailers-only answer: grpc-status in it)
            # stays one: an HTTP/2 client gets it with END_STREAM, an HTTP/1.1 one empty.
            fields.append((b"content-length", b"0"))
        ex.resp_headers = fields
        ex.resp_reason = b""
        ex.on_response_head(status)
        if ended:
            self.on_end()

    def on_data(self, data: bytes, flow_len: int) -> None:
        ex = self.exchange
        if ex is not None:
            ex.on_response_body(data)
        if self.reading_paused:
            self.unacked += flow_len
        elif flow_len:
            self.conn.acknowledge(self.stream_id, flow_len)

    def resume(self) -> None:
        self.reading_paused = False
        if self.unacked:
            unacked, self.unacked = self.unacked, 0
            self.conn.acknowledge(self.stream_id, unacked)
            self.conn.flush()

    def on_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        ex = self.exchange
        if ex is not None:
            for name, value in headers:
                ex.on_response_trailer(name, value)

    def on_end(self) -> None:
        if self.ended_in:
            return
        self.ended_in = True
        ex = self.exchange
        if ex is not None:
            ex.on_response_complete()
        if self.ended_out:
            self._forget()

    def on_reset(self) -> None:
        """The region reset the stream, or its connection went: as an HTTP/1.1 reset."""
        if self.closed:
            return
        self.closed = True
        self._forget()
        ex = self.exchange
        self.exchange = None
        if ex is not None and not self.ended_in:
            ex.on_upstream_lost(self, None)

    # -- UpstreamConnection ----------------------------------------------------------------

    def usable(self) -> bool:
        return not self.closed and self.conn.usable()

    def reset_parser(self) -> None:
        return None

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        """The exchange is done with the stream: cancel it unless both sides ended."""
        if self.closed:
            return
        self.closed = True
        if not (self.ended_in and self.ended_out):
            with contextlib.suppress(ProtocolError, StreamClosedError):
                self.conn.h2.reset_stream(self.stream_id, _CANCEL)
            self.conn.flush()
        self._forget()

    def _forget(self) -> None:
        self.conn.forget(self)


def _ignore(conn: UpstreamConnection) -> None:
    return None


class H2Pool:
    """One HTTP/2 connection per h2 region endpoint, opened on first use, shared by streams."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.conns: dict[str, H2RegionConnection] = {}
        self._opening: dict[str, asyncio.Future[H2RegionConnection]] = {}
        self._ssl: dict[str, ssl.SSLContext] = {}

    async def connect(self, endpoint: Endpoint, ca_file: str | None) -> UpstreamConnection:
        """A new stream to the endpoint (its connection opened first when there is none)."""
        key = endpoint.url
        conn = self.conns.get(key)
        if conn is None or not conn.usable():
            opening = self._opening.get(key)
            if opening is None:
                opening = asyncio.ensure_future(self._open(endpoint, ca_file))
                self._opening[key] = opening
                try:
                    conn = await asyncio.shield(opening)
                finally:
                    self._opening.pop(key, None)
                self.conns[key] = conn
            else:
                conn = await asyncio.shield(opening)
        return conn.open_stream()

    async def _open(self, endpoint: Endpoint, ca_file: str | None) -> H2RegionConnection:
        ctx = None
        if endpoint.scheme == "https":
            ctx = self._ssl.get(endpoint.url)
            if ctx is None:
                ctx = ssl.create_default_context(cafile=ca_file)
                ctx.set_alpn_protocols(["h2"])
                self._ssl[endpoint.url] = ctx
        dns = self.pool.dns
        first = dns.pick(endpoint.host) or await dns.resolve(endpoint.host)
        addresses = dns.current(endpoint.host) or (first,)

        # Each address in turn, as a connect by name would ("localhost": ::1, 127.0.0.1).
        opening = connect_first(
            partial(H2RegionConnection, endpoint.url, endpoint.host),
            addresses,
            endpoint.port,
            ctx,
            endpoint.host,
        )
        return await asyncio.wait_for(opening, self.pool.connect_timeout_s)

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()
