"""HTTP/2 from clients: one connection's protocol, and how a connection is found to be one.

``H2ClientConnection`` runs the jh2 state machine (HPACK, frames, flow control; its own
header checks are off: ``h2stream.build_exchange`` checks fields the RFC's way while it
builds the upstream head, one walk instead of three) and maps each stream to an
``H2Exchange``. Regions are spoken to over HTTP/1.1, exactly as for HTTP/1.1 clients.

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
from typing import TYPE_CHECKING, Any

from jh2._hazmat import HPACKError as CompiledHPACKError
from jh2.config import H2Configuration
from jh2.connection import H2Connection
from jh2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from jh2.exceptions import ProtocolError, StreamClosedError
from jh2.hpack.exceptions import HPACKError
from jh2.hyperframe.frame import GoAwayFrame
from jh2.settings import SettingCodes

from router.errors import ProxyError
from router.proxy.client import ClientConnection
from router.proxy.h2stream import H2Exchange, H2Stream, StreamError, build_exchange

if TYPE_CHECKING:
    from router.proxy.core import ProxyCore

log = logging.getLogger("router.proxy.h2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_PROTOCOL_ERROR = 0x1
_FRAME_SIZE_ERROR = 0x6
_COMPRESSION_ERROR = 0x9
_REFUSED_STREAM = 0x7
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
        self.h2: Any = H2Connection(
            H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_inbound_headers=False,
                normalize_inbound_headers=False,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.h2.local_settings = self.h2.local_settings.__class__(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: cfg.http2.max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: cfg.limits.max_header_bytes,
                SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
                SettingCodes.ENABLE_PUSH: 0,
            },
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
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_CONNECTION_WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.last_active = monotonic()
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            # jh2 queued GOAWAY with the error's code: send it and close.
            log.debug("h2 protocol error from %s: %s", self.peer.decode(), exc)
            if isinstance(exc.__context__, (HPACKError, CompiledHPACKError)):
                self._compression_error()
            self._fail_connection()
            return
        buffered = self.h2.incoming_buffer
        if len(buffered._data) - buffered._data_offset > self.h2.max_inbound_frame_size + 9:
            # jh2 checks a frame's length only once all of it has arrived: an over-long
            # one would be buffered whole first (up to 16 MiB). Refused at its header.
            self._send_goaway(_FRAME_SIZE_ERROR)
            self._fail_connection()
            return
        self._corked += 1
        try:
            for event in events:
                self._event(event)
        finally:
            self._corked -= 1
            self.flush()

    def _event(self, event: object) -> None:
        if isinstance(event, RequestReceived):
            self._request(event.stream_id, event.headers, event.stream_ended is not None)
        elif isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_data(event.data, event.flow_controlled_length)
            elif event.flow_controlled_length:
                self.acknowledge(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_end()
        elif isinstance(event, WindowUpdated):
            self._window_opened(event.stream_id)
        elif isinstance(event, TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_trailers(event.headers)
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.on_reset()
        elif isinstance(event, ConnectionTerminated):
            self.going_away = True
            if not self.streams:
                self.close()

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        stream = H2Stream(self, stream_id)
        if self.going_away or self.core.draining:
            self.reset_stream(stream_id, _REFUSED_STREAM)
            return
        self.streams[stream_id] = stream
        try:
            ex = build_exchange(self.core, stream, headers, ended)
        except StreamError as exc:
            log.debug("h2 stream %d from %s: %s", stream_id, self.peer.decode(), exc)
            stream.reset(_PROTOCOL_ERROR)
            return
        except ProxyError as error:
            self.core.stats.record("none", "OTHER", str(error.status), 0.0)
            stream.refuse(error, dict(headers).get(b"x-request-id"), ended)
            return
        stream.ex = ex
        ex.start()  # (jh2's StreamEnded event, after this one, ends a body: on_end)

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
        """Write what jh2 queued, once per loop iteration: every stream answered in this
        iteration (several upstream reads) shares one write instead of one each."""
        if not self._flush_scheduled and not self._corked and not self.closed:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        if self.transport is None or self.closed:
            return
        out = self.h2.data_to_send()
        if out:
            self.last_active = monotonic()  # a long response to a quiet client is not idle
            self.transport.write(out)

    def send_headers(
        self, stream_id: int, fields: list[tuple[bytes, bytes]], end_stream: bool
    ) -> None:
        try:
            self.h2.send_headers(stream_id, fields, end_stream=end_stream)
        except (ProtocolError, StreamClosedError):
            return
        self.flush()

    def send_data(self, stream_id: int, chunks: list[bytes], end: bool) -> bool:
        """Send from ``chunks`` what the window allows (consumed in place); ``end``: the
        last frame carries END_STREAM when all of it went. True when that happened."""
        h2 = self.h2
        try:
            window = h2.local_flow_control_window(stream_id)
            frame = h2.max_outbound_frame_size
            while chunks and window > 0:
                chunk = chunks[0]
                n = min(len(chunk), window, frame)
                if n < len(chunk):
                    h2.send_data(stream_id, chunk[:n])
                    chunks[0] = chunk[n:]
                else:
                    chunks.pop(0)
                    h2.send_data(stream_id, chunk, end_stream=end and not chunks)
                window -= n
        except (ProtocolError, StreamClosedError):
            chunks.clear()
            return False
        stream = self.streams.get(stream_id)
        if chunks and stream is not None:
            self.blocked[stream_id] = stream
        else:
            self.blocked.pop(stream_id, None)
        self.flush()
        return end and not chunks

    def end_stream(self, stream_id: int, trailers: list[tuple[bytes, bytes]]) -> None:
        try:
            if trailers:
                self.h2.send_headers(stream_id, trailers, end_stream=True)
            else:
                self.h2.end_stream(stream_id)
        except (ProtocolError, StreamClosedError):
            return
        self.flush()

    def reset_stream(self, stream_id: int, code: int) -> None:
        try:
            self.h2.reset_stream(stream_id, code)
        except (ProtocolError, StreamClosedError):
            return
        self.flush()

    def acknowledge(self, stream_id: int, size: int) -> None:
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except (ProtocolError, StreamClosedError):
            return
        self.flush()

    def stream_done(self, stream: H2Stream) -> None:
        stream.ex = None  # no stream <-> exchange cycle left for the cyclic GC to find
        self.streams.pop(stream.stream_id, None)
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

    def _compression_error(self) -> None:
        """jh2 answers a bad header block with GOAWAY PROTOCOL_ERROR; RFC 9113 4.3 says
        COMPRESSION_ERROR: the code of the GOAWAY it just queued (the last frame) is fixed."""
        out = bytearray(self.h2.data_to_send())
        if len(out) >= 17 and out[-17:-13] == b"\x00\x00\x08\x07":
            out[-4:] = _COMPRESSION_ERROR.to_bytes(4, "big")
        if self.transport is not None:
            self.transport.write(bytes(out))

    def _send_goaway(self, code: int) -> None:
        """GOAWAY written around jh2: its close_connection() closes the state machine, after
        which the open streams could not be answered (RFC 9113 6.8 lets them finish)."""
        self.going_away = True
        self.flush()
        if self.transport is not None and not self.closed:
            frame = GoAwayFrame(0)
            frame.last_stream_id = self.h2.highest_inbound_stream_id
            frame.error_code = code
            self.transport.write(frame.serialize())

    def _fail_connection(self) -> None:
        self.going_away = True  # the GOAWAY with the error's code is already queued
        self.flush()
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
