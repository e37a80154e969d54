"""One request to an h2 region (``regions[].protocol: h2``): a stream, in the place of an
``UpstreamConnection``.

The exchange writes the HTTP/1.1 request it builds for every region (head, body, chunked
trailers); an ``H2RegionStream`` re-reads it with httptools into HEADERS, DATA and trailing
HEADERS frames, and delivers the region's HEADERS, DATA and trailers back as the callbacks
an HTTP/1.1 response makes. Its connection (``router.proxy.h2upstream``) carries the
frames; a stream sees it as an ``H2Carrier``, a base class that connection extends.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httptools
from jh2.exceptions import ProtocolError, StreamClosedError

from router.proxy.upstream import UpstreamConnection

# Request fields HTTP/2 does not carry (RFC 9113 8.2.2); Host becomes :authority.
_NOT_FORWARDED = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
)
_CANCEL = 0x8
# The region's response as the exchange expects an HTTP/1.1 one: framed to the end of the
# stream, which HTTP/1.1 calls chunked (dropped again before the client sees it).
_FRAMED = (b"transfer-encoding", b"chunked")


class H2Carrier(asyncio.Protocol):
    """What a stream needs of its HTTP/2 connection (``H2RegionConnection``, which sits
    above this module: it opens streams and dispatches the region's frames to them)."""

    key: str  # the endpoint URL
    host: str
    address: str
    h2: Any  # jh2's H2Connection (untyped)

    def usable(self) -> bool:
        raise NotImplementedError

    def flush(self) -> None:
        """Write what the HTTP/2 state machine has queued."""
        raise NotImplementedError

    def acknowledge(self, stream_id: int, size: int) -> None:
        """Give ``size`` bytes of receive window back to the region."""
        raise NotImplementedError

    def forget(self, stream: H2RegionStream) -> None:
        """``stream`` is done (both ends, or reset)."""
        raise NotImplementedError


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

    def __init__(self, conn: H2Carrier, stream_id: int) -> None:
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
