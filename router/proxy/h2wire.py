"""HTTP/2 server framing for client connections (RFC 9113), written for mypyc.

``H2Framer`` reads frames straight out of the connection's receive buffer (9-byte header,
then the payload by slicing), keeps the connection's and each stream's send and receive
windows, assembles header blocks (HEADERS + CONTINUATION), and tells its ``FrameHandler``
what happened by a direct call per event: no frame objects, no event lists. What it
sends is appended to ``out`` as bytes, written by the connection once per loop iteration.

HPACK: request blocks are decoded by jh2's compiled decoder (it keeps the dynamic table);
responses are encoded by ``h2hpack``'s stateless encoder.

Errors get RFC 9113's answers: a connection error raises ``H2Error`` inside ``receive``,
which queues GOAWAY with its code and stops reading; a stream error queues RST_STREAM and
tells the handler the stream is gone (``on_reset``).
"""

from __future__ import annotations

from typing import Final, Protocol

from jh2._hazmat import Decoder, HPACKError, OversizedHeaderListError

from router.proxy.h2frames import (
    ACK,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    MAX_FRAME,
    MAX_WINDOW,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    RST_STREAM,
    SETTING,
    SETTINGS,
    STREAM_CLOSED,
    U32,
    WINDOW_UPDATE,
    FrameWriter,
    H2Error,
    Header,
    StreamWindows,
    frame,
    unpad,
    window_update,
)

RAPID_RESET_FLOOR: Final = 500  # streams opened before the early-reset share is judged


class FrameHandler(Protocol):
    """What the framer reports (router.proxy.h2front.H2ClientConnection)."""

    def on_request(self, stream_id: int, headers: list[Header], ended: bool) -> None: ...
    def on_data(self, stream_id: int, data: bytes, flow_len: int) -> None: ...
    def on_trailers(self, stream_id: int, headers: list[Header]) -> None: ...
    def on_end(self, stream_id: int) -> None: ...
    def on_reset(self, stream_id: int) -> None: ...
    def on_window(self, stream_id: int) -> None: ...
    def on_goaway(self) -> None: ...


class H2Framer(FrameWriter):
    """The server side of one HTTP/2 connection: frames in, events to the handler."""

    def __init__(
        self,
        handler: FrameHandler,
        *,
        max_streams: int,
        max_header_bytes: int,
        stream_window: int,
        connection_window: int,
    ) -> None:
        super().__init__(stream_window, connection_window)
        self.handler = handler
        self.buf = b""  # received bytes not yet parsed (at most one partial frame)
        self.preface = False  # the client preface was read
        self.settings_seen = False  # its first frame, SETTINGS, was read
        self.failed = False  # a connection error was sent: nothing more is read
        self.opened = 0  # streams the client opened
        self.early_resets = 0  # of those, reset by the client before they were answered
        self.block_sid = 0  # a header block awaiting CONTINUATION on this stream (0: none)
        self.block_parts: list[bytes] = []
        self.block_size = 0
        self.block_ended = False
        # HPACK can expand a small block into a huge list: the decoder stops at this size
        # (a connection error: its table is then unusable); the router's own limit
        # (limits.max_header_bytes, a stream error) is checked on what it returns.
        self.block_limit = max(4 * max_header_bytes, 65536)
        self.decoder = Decoder()
        self.decoder.max_header_list_size = self.block_limit
        settings = (
            SETTING.pack(0x2, 0)  # ENABLE_PUSH
            + SETTING.pack(0x3, max_streams)  # MAX_CONCURRENT_STREAMS
            + SETTING.pack(0x4, stream_window)  # INITIAL_WINDOW_SIZE
            + SETTING.pack(0x6, max_header_bytes)  # MAX_HEADER_LIST_SIZE
        )
        self.out.append(frame(SETTINGS, 0, 0, settings))
        if connection_window > 65535:
            self.out.append(window_update(0, connection_window - 65535))

    # -- receiving -------------------------------------------------------------------------

    def receive(self, data: bytes) -> int:
        """Parse what arrived; 0, or the code of the connection error now queued."""
        if self.failed:
            return 0
        buf = self.buf + data if self.buf else data
        pos = 0
        try:
            if not self.preface:
                if len(buf) < 24:
                    if not PREFACE.startswith(buf):
                        raise H2Error(PROTOCOL_ERROR, "not the client preface")
                    self.buf = buf
                    return 0
                if buf[:24] != PREFACE:
                    raise H2Error(PROTOCOL_ERROR, "not the client preface")
                self.preface = True
                pos = 24
            end = len(buf)
            while end - pos >= 9:
                length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
                if length > MAX_FRAME:
                    # refused at its header: it is never buffered whole
                    raise H2Error(FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE")
                start = pos + 9
                if end - start < length:
                    break
                ftype = buf[pos + 3]
                flags = buf[pos + 4]
                sid = U32.unpack_from(buf, pos + 5)[0] & 0x7FFFFFFF
                pos = start + length
                self._frame(ftype, flags, sid, buf[start:pos])
        except H2Error as exc:
            self.fail(exc.code)
            return exc.code
        self.buf = buf[pos:] if pos < len(buf) else b""
        return 0

    def fail(self, code: int) -> None:
        """A connection error: GOAWAY with ``code``; nothing more is read."""
        self.failed = True
        self.buf = b""
        self.goaway(code)

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes) -> None:
        if self.block_sid and ftype != CONTINUATION:
            raise H2Error(PROTOCOL_ERROR, "a frame inside a header block")
        if not self.settings_seen:
            if ftype != SETTINGS or flags & ACK:
                raise H2Error(PROTOCOL_ERROR, "the first frame is not SETTINGS")
            self.settings_seen = True
        if ftype == DATA:
            self._data(flags, sid, payload)
        elif ftype == HEADERS:
            self._headers(flags, sid, payload)
        elif ftype == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif ftype == CONTINUATION:
            self._continuation(flags, sid, payload)
        elif ftype == SETTINGS:
            self._settings(flags, sid, payload)
        elif ftype == RST_STREAM:
            self._rst_stream(sid, payload)
        elif ftype == PING:
            if sid:
                raise H2Error(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise H2Error(FRAME_SIZE_ERROR, "PING not 8 bytes")
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif ftype == PRIORITY:
            if not sid:
                raise H2Error(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                self.stream_error(sid, FRAME_SIZE_ERROR)
            # otherwise ignored: RFC 9113 deprecates the priority scheme
        elif ftype == GOAWAY:
            if sid:
                raise H2Error(PROTOCOL_ERROR, "GOAWAY on a stream")
            self.handler.on_goaway()
        elif ftype == PUSH_PROMISE:
            raise H2Error(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # unknown frame types are ignored (RFC 9113 5.5)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise H2Error(PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        self.recv_window -= flow
        if self.recv_window < 0:
            raise H2Error(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        data = unpad(flags, payload)
        st = self.streams.get(sid)
        if st is None:
            if sid > self.highest:
                raise H2Error(PROTOCOL_ERROR, "DATA on an idle stream")
            self.credit(flow)  # a closed stream's late DATA: ignored, window kept open
            return
        if st.remote_closed:
            self.credit(flow)
            self.stream_error(sid, STREAM_CLOSED)
            return
        st.recv -= flow
        if st.recv < 0:
            self.credit(flow)
            self.stream_error(sid, FLOW_CONTROL_ERROR)
            return
        ended = bool(flags & END_STREAM)
        if ended:
            st.remote_closed = True
        self.handler.on_data(sid, data, flow)
        if ended:
            self.handler.on_end(sid)

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise H2Error(PROTOCOL_ERROR, "HEADERS on stream 0")
        block = unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(block) < 5:
                raise H2Error(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            block = block[5:]
        ended = bool(flags & END_STREAM)
        if flags & END_HEADERS:
            self._header_block(sid, block, ended)
            return
        self.block_sid = sid
        self.block_parts = [block]
        self.block_size = len(block)
        self.block_ended = ended

    def _continuation(self, flags: int, sid: int, payload: bytes) -> None:
        if not self.block_sid or sid != self.block_sid:
            raise H2Error(PROTOCOL_ERROR, "CONTINUATION outside its header block")
        self.block_parts.append(payload)
        self.block_size += len(payload)
        if self.block_size > self.block_limit:
            raise H2Error(ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            block = b"".join(self.block_parts)
            self.block_sid = 0
            self.block_parts = []
            self._header_block(sid, block, self.block_ended)

    def _header_block(self, sid: int, block: bytes, ended: bool) -> None:
        try:
            raw = self.decoder.decode(block, True)
        except OversizedHeaderListError as exc:
            raise H2Error(ENHANCE_YOUR_CALM, "header list too large to decode") from exc
        except (HPACKError, ValueError, IndexError) as exc:
            raise H2Error(COMPRESSION_ERROR, "header block does not decode") from exc
        headers: list[Header] = [(n, v) for n, v, _ in raw]  # (bytes: raw=True)
        st = self.streams.get(sid)
        if st is not None:  # trailers
            if st.remote_closed:
                self.stream_error(sid, STREAM_CLOSED)
            elif not ended:
                self.stream_error(sid, PROTOCOL_ERROR)  # trailers must end the stream
            else:
                st.remote_closed = True
                self.handler.on_trailers(sid, headers)
                self.handler.on_end(sid)
            return
        if sid <= self.highest:
            return  # a stream already closed (perhaps reset by us): ignored (RFC 9113 5.1)
        if not sid & 1:
            raise H2Error(PROTOCOL_ERROR, "a client stream with an even id")
        self.highest = sid
        self.opened += 1
        self.streams[sid] = StreamWindows(self.peer_window, self.stream_window, ended)
        self.handler.on_request(sid, headers, ended)

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise H2Error(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise H2Error(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise H2Error(FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        opened = False
        for i in range(0, len(payload), 6):
            ident, value = SETTING.unpack_from(payload, i)
            if ident == 0x2 and value > 1:
                raise H2Error(PROTOCOL_ERROR, "ENABLE_PUSH not 0 or 1")
            if ident == 0x4:
                if value > MAX_WINDOW:
                    raise H2Error(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                delta = value - self.peer_window
                self.peer_window = value
                for st in self.streams.values():
                    st.send += delta
                    if st.send > MAX_WINDOW:
                        raise H2Error(FLOW_CONTROL_ERROR, "a stream window overflows")
                opened = opened or delta > 0
            elif ident == 0x5:
                if not 16384 <= value <= 16777215:
                    raise H2Error(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self.peer_frame = value
            # HEADER_TABLE_SIZE: the encoder never uses the dynamic table; others: advisory
        self.out.append(frame(SETTINGS, ACK, 0, b""))
        if opened:
            self.handler.on_window(0)

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2Error(FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes")
        increment = U32.unpack(payload)[0] & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise H2Error(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise H2Error(FLOW_CONTROL_ERROR, "the connection window overflows")
            self.handler.on_window(0)
            return
        st = self.streams.get(sid)
        if st is None:
            if sid > self.highest:
                raise H2Error(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return  # a closed stream: ignored
        if not increment:
            self.stream_error(sid, PROTOCOL_ERROR)
            return
        st.send += increment
        if st.send > MAX_WINDOW:
            self.stream_error(sid, FLOW_CONTROL_ERROR)
            return
        self.handler.on_window(sid)

    def _rst_stream(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2Error(FRAME_SIZE_ERROR, "RST_STREAM not 4 bytes")
        if not sid:
            raise H2Error(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if self.streams.pop(sid, None) is not None:
            self.handler.on_reset(sid)
            # Reset before its answer was complete. Envoy's guard against "rapid reset"
            # (CVE-2023-44487): once enough streams were opened, a client that resets at
            # least half of them is costing region requests for nothing.
            self.early_resets += 1
            if self.opened >= RAPID_RESET_FLOOR and 2 * self.early_resets >= self.opened:
                raise H2Error(ENHANCE_YOUR_CALM, "most streams reset early (rapid reset)")
        elif sid > self.highest:
            raise H2Error(PROTOCOL_ERROR, "RST_STREAM on an idle stream")

    def stream_error(self, sid: int, code: int) -> None:
        self.out.append(frame(RST_STREAM, 0, sid, U32.pack(code)))
        if self.streams.pop(sid, None) is not None:
            self.handler.on_reset(sid)
