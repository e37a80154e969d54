"""HTTP/2 from clients: one connection's protocol, and how a connection is found to be one.

``H2ClientConnection`` runs the router's own HTTP/2 server framing (``h2wire.H2Framer``:
frames, flow control, HPACK) and maps each stream to an ``H2Exchange``; the fields of a
request are checked the RFC's way by ``h2request.build_exchange`` while it builds the
upstream head. Regions are spoken to over HTTP/1.1, exactly as for HTTP/1.1 clients.

``Preface`` is what the plain listener (``http2.enabled``) and the https listener hand a
new connection: ALPN ``h2``, or the client preface ``PRI * HTTP/2.0`` as the first bytes
(h2c with prior knowledge), switch it to HTTP/2; anything else to ``ClientConnection``.
With HTTP/2 off, the listeners create ``ClientConnection`` directly: the HTTP/1.1 path
pays nothing for HTTP/2 existing.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import TYPE_CHECKING

from router.errors import ProxyError
from router.proxy.client import ClientConnection
from router.proxy.h2frames import PREFACE, PROTOCOL_ERROR, REFUSED_STREAM, Header
from router.proxy.h2request import StreamError, build_exchange
from router.proxy.h2stream import H2Exchange, H2Stream
from router.proxy.h2wire import H2Framer

if TYPE_CHECKING:
    from router.proxy.core import ProxyCore

log = logging.getLogger("router.proxy.h2")

# The connection-level receive window: large, so a stream whose region is slow to take its
# upload (its own window held back) cannot starve the other streams' uploads.
_CONNECTION_WINDOW = 16 * 1024 * 1024
_STREAM_WINDOW = 256 * 1024


class H2ClientConnection(asyncio.Protocol):
    """One HTTP/2 client connection: streams in, one ``H2Exchange`` per stream."""

    def __init__(self, core: ProxyCore, *, tls: bool = False) -> None:
        self.core = core
        self.proto = b"https" if tls else b"http"
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        self.streams: dict[int, H2Stream] = {}
        self.blocked: dict[int, H2Stream] = {}  # streams waiting for flow-control window
        self.writing_paused = False
        self.closed = False
        self.going_away = False
        self.last_active = monotonic()
        self.tunnel: None = None  # (ProxyServer.drain and the sweeper read these)
        self._corked = 0
        self._flush_scheduled = False
        self.loop = core.loop
        cfg = core.config
        self.max_streams = cfg.http2.max_concurrent_streams
        self.wire = H2Framer(
            self,
            max_streams=self.max_streams,
            max_header_bytes=cfg.limits.max_header_bytes,
            stream_window=_STREAM_WINDOW,
            connection_window=_CONNECTION_WINDOW,
        )

    @property
    def active(self) -> H2Exchange | None:
        """An exchange still in flight on this connection (drain waits while there is one)."""
        for stream in self.streams.values():
            if stream.ex is not None and not stream.ex.done:
                return stream.ex
        return None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]).encode() if peer else b"unknown"
        self.core.connections.add(self)
        self.flush()  # our SETTINGS and connection window

    def data_received(self, data: bytes) -> None:
        self.last_active = monotonic()
        self._corked += 1
        try:
            code = self.wire.receive(data)
        finally:
            self._corked -= 1
        if code:
            # the framer queued GOAWAY with the error's code: send it and close
            log.debug("h2 connection error 0x%x from %s", code, self.peer.decode())
            self._fail_connection()
        else:
            self.flush()
            self.core.writes.count_read()

    def count_read(self) -> None:
        """A stream's region answered (``H2Stream.uncork_later``): a read of the pass."""
        self.core.writes.count_read()

    # -- from the framer (h2wire.FrameHandler) ---------------------------------------------

    def on_request(self, stream_id: int, headers: list[Header], ended: bool) -> None:
        self._request(stream_id, headers, ended)

    def on_data(self, stream_id: int, data: bytes, flow_len: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_data(data, flow_len)
        elif flow_len:
            self.wire.acknowledge(stream_id, flow_len)

    def on_trailers(self, stream_id: int, headers: list[Header]) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_trailers(headers)

    def on_end(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_end()

    def on_reset(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.on_reset()

    def on_window(self, stream_id: int) -> None:
        self._window_opened(stream_id)

    def on_goaway(self) -> None:
        self.going_away = True
        if not self.streams:
            self.close()

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        stream = H2Stream(self, stream_id)
        stream.head = headers
        if self.going_away or self.core.draining:
            self.reset_stream(stream_id, REFUSED_STREAM)
            return
        if len(self.streams) >= self.max_streams:
            self.reset_stream(stream_id, REFUSED_STREAM)  # over max_concurrent_streams
            return
        self.streams[stream_id] = stream
        try:
            ex = build_exchange(self.core, stream, headers, ended)
        except StreamError as exc:
            log.debug("h2 stream %d from %s: %s", stream_id, self.peer.decode(), exc)
            stream.reset(PROTOCOL_ERROR)
            return
        except ProxyError as error:
            self.core.stats.record("none", "OTHER", str(error.status), 0.0)
            stream.refuse(error, dict(headers).get(b"x-request-id"), ended)
            return
        stream.ex = ex
        ex.start()  # (a later END_STREAM ends the body: on_end)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.core.connections.discard(self)
        for stream in list(self.streams.values()):
            stream.on_reset()
        self.streams.clear()
        self.blocked.clear()

    def pause_writing(self) -> None:
        self.writing_paused = True
        for stream in self.streams.values():
            stream.set_blocked(True)

    def resume_writing(self) -> None:
        self.writing_paused = False
        for stream in list(self.streams.values()):
            stream.set_blocked(bool(stream.outbuf))

    # -- from streams ----------------------------------------------------------------------

    def cork(self) -> None:
        self._corked += 1

    def uncork(self) -> None:
        self._corked -= 1
        if self._corked <= 0:
            self._corked = 0
            self.flush()

    def flush(self) -> None:
        """Write what the framer queued, once per loop iteration: every stream answered in this
        iteration (several upstream reads) shares one write instead of one each."""
        if not self._flush_scheduled and not self._corked and not self.closed:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        if self.transport is None or self.closed:
            return
        out = self.wire.data_to_send()
        if out:
            self.last_active = monotonic()  # a long response to a quiet client is not idle
            self.transport.write(out)

    def send_headers(self, stream_id: int, fields: list[Header], end_stream: bool) -> None:
        self.wire.send_headers(stream_id, fields, end_stream)
        self.flush()

    def send_data(self, stream_id: int, chunks: list[bytes], end: bool) -> bool:
        """Send from ``chunks`` what the window allows (consumed in place); ``end``: the
        last frame carries END_STREAM when all of it went. True when that happened."""
        ended = self.wire.send_data(stream_id, chunks, end)
        stream = self.streams.get(stream_id)
        if chunks and stream is not None:
            self.blocked[stream_id] = stream
        else:
            self.blocked.pop(stream_id, None)
        self.flush()
        return ended

    def end_stream(self, stream_id: int, trailers: list[Header]) -> None:
        self.wire.end_stream(stream_id, trailers)
        self.flush()

    def reset_stream(self, stream_id: int, code: int) -> None:
        self.wire.reset_stream(stream_id, code)
        self.flush()

    def acknowledge(self, stream_id: int, size: int) -> None:
        self.wire.acknowledge(stream_id, size)
        self.flush()

    def stream_done(self, stream: H2Stream) -> None:
        stream.ex = None  # no stream <-> exchange cycle left for the cyclic GC to find
        self.streams.pop(stream.stream_id, None)
        self.wire.forget(stream.stream_id)
        self.blocked.pop(stream.stream_id, None)
        if not self.streams and (self.going_away or self.core.draining):
            self.close()

    def _window_opened(self, stream_id: int) -> None:
        if stream_id:
            stream = self.blocked.get(stream_id)
            if stream is not None:
                stream.send_pending()
            return
        for stream in list(self.blocked.values()):
            stream.send_pending()

    # -- lifecycle -------------------------------------------------------------------------

    def goaway(self) -> None:
        """Tell the client to open no more streams (shutdown, reload drain)."""
        if self.going_away or self.closed:
            return
        self._send_goaway(0)
        if not self.streams:
            self.close()

    def _send_goaway(self, code: int) -> None:
        """GOAWAY; the open streams may still finish (RFC 9113 6.8)."""
        self.going_away = True
        self.wire.goaway(code)
        self.flush()

    def _fail_connection(self) -> None:
        self.going_away = True  # the GOAWAY with the error's code is already queued
        for stream in list(self.streams.values()):
            stream.on_reset()
        self.close()

    def idle_timeout(self) -> None:
        """No frame moved for ``timeouts.idle`` (the sweeper calls this)."""
        if not self.streams:
            self.goaway()
            self.close()
        elif self.active is None or all(s.outbuf for s in self.streams.values()):
            self._fail_connection()

    def close(self) -> None:
        if self.closed or self.transport is None:
            return
        if not self.going_away:
            self.goaway()
            if self.closed:
                return
        self._flush_now()  # closing (perhaps inside a corked read): send what is queued now
        self.closed = True
        self.transport.close()

    def __repr__(self) -> str:
        return f"<H2ClientConnection peer={self.peer.decode()} streams={len(self.streams)}>"


class Preface(asyncio.Protocol):
    """A new connection until it is known to speak HTTP/2 (ALPN h2, or the h2c preface)."""

    def __init__(self, core: ProxyCore, *, tls: bool = False) -> None:
        self.core = core
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            self._switch(H2ClientConnection(self.core, tls=self.tls))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head = self.buffer[: len(PREFACE)]
        if len(head) < len(PREFACE) and PREFACE.startswith(head):
            return  # too few bytes to tell yet
        if head == PREFACE:
            self._switch(H2ClientConnection(self.core, tls=self.tls))
        else:
            self._switch(ClientConnection(self.core, tls=self.tls))

    def _switch(self, proto: asyncio.Protocol) -> None:
        transport = self.transport
        assert transport is not None
        transport.set_protocol(proto)
        proto.connection_made(transport)
        data, self.buffer = self.buffer, b""
        if data:
            proto.data_received(data)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
