"""HTTP/2 frames for the server side (RFC 9113): constants, frame building, and the
sending half of a connection's framing (``FrameWriter``: windows, HEADERS/DATA/RST_STREAM/
GOAWAY out). ``h2wire.H2Framer`` adds the receiving half. Written for mypyc: frames are
built as bytes straight into the connection's output list.
"""

from __future__ import annotations

from struct import Struct
from typing import Final

from router.proxy import h2hpack

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PADDED: Final = 0x8
PRIORITY_FLAG: Final = 0x20

NO_ERROR: Final = 0x0
PROTOCOL_ERROR: Final = 0x1
FLOW_CONTROL_ERROR: Final = 0x3
STREAM_CLOSED: Final = 0x5
FRAME_SIZE_ERROR: Final = 0x6
REFUSED_STREAM: Final = 0x7
COMPRESSION_ERROR: Final = 0x9
ENHANCE_YOUR_CALM: Final = 0xB

MAX_WINDOW: Final = 2**31 - 1
MAX_FRAME: Final = 16384  # our SETTINGS_MAX_FRAME_SIZE: the default, so not announced
HEAD = Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream id
U32 = Struct(">L")
SETTING = Struct(">HL")

Header = tuple[bytes, bytes]


def frame(ftype: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    n = len(payload)
    return HEAD.pack(n >> 16, n & 0xFFFF, ftype, flags, stream_id) + payload


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, U32.pack(increment))


class H2Error(Exception):
    """A connection error: GOAWAY with ``code``, and the connection ends."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


class StreamWindows:
    """One open stream's flow-control state."""

    def __init__(self, send: int, recv: int, remote_closed: bool) -> None:
        self.send = send  # bytes we may still send on it
        self.recv = recv  # bytes the client may still send on it
        self.unacked = 0  # received and consumed, not yet given back by WINDOW_UPDATE
        self.remote_closed = remote_closed  # the client's END_STREAM came


class FrameWriter:
    """The sending half of one connection: what may be sent (windows) and the frames."""

    def __init__(self, stream_window: int, connection_window: int) -> None:
        self.out: list[bytes] = []  # frames queued, written once per loop iteration
        self.streams: dict[int, StreamWindows] = {}
        self.highest = 0  # the highest stream id the client opened
        self.send_window = 65535  # the connection's, towards the client
        self.peer_window = 65535  # the client's SETTINGS_INITIAL_WINDOW_SIZE
        self.peer_frame = 16384  # the client's SETTINGS_MAX_FRAME_SIZE
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.recv_window = connection_window  # what the client may still send in all
        self.conn_unacked = 0

    def credit(self, size: int) -> None:
        """Give ``size`` back to the connection's receive window, in large steps."""
        self.conn_unacked += size
        if self.conn_unacked >= self.connection_window >> 2:
            self.out.append(window_update(0, self.conn_unacked))
            self.recv_window += self.conn_unacked
            self.conn_unacked = 0

    def acknowledge(self, sid: int, size: int) -> None:
        """``size`` bytes of ``sid``'s DATA were consumed: the client may send as many more."""
        self.credit(size)
        st = self.streams.get(sid)
        if st is not None and not st.remote_closed:
            st.unacked += size
            if st.unacked >= self.stream_window >> 2:
                self.out.append(window_update(sid, st.unacked))
                st.recv += st.unacked
                st.unacked = 0

    def send_headers(self, sid: int, fields: list[Header], end_stream: bool) -> None:
        if sid not in self.streams:
            return  # reset meanwhile
        block = h2hpack.encode(fields)
        flags = END_STREAM if end_stream else 0
        size = self.peer_frame
        if len(block) <= size:
            self.out.append(frame(HEADERS, flags | END_HEADERS, sid, block))
            return
        self.out.append(frame(HEADERS, flags, sid, block[:size]))
        for i in range(size, len(block), size):
            last = END_HEADERS if i + size >= len(block) else 0
            self.out.append(frame(CONTINUATION, last, sid, block[i : i + size]))

    def send_data(self, sid: int, chunks: list[bytes], end: bool) -> bool:
        """Send from ``chunks`` what the windows allow (consumed in place); ``end``: the
        last frame carries END_STREAM when all of it went. True when that happened."""
        st = self.streams.get(sid)
        if st is None:
            chunks.clear()
            return False
        window = min(st.send, self.send_window)
        size = self.peer_frame
        out = self.out
        sent = 0
        ended = False
        while chunks and window > 0:
            chunk = chunks[0]
            n = min(len(chunk), window, size)
            flags = 0
            if n < len(chunk):
                chunks[0] = chunk[n:]
                chunk = chunk[:n]
            else:
                chunks.pop(0)
                if end and not chunks:
                    flags = END_STREAM
                    ended = True
            out.append(HEAD.pack(n >> 16, n & 0xFFFF, DATA, flags, sid))
            out.append(chunk)
            window -= n
            sent += n
        st.send -= sent
        self.send_window -= sent
        return ended

    def end_stream(self, sid: int, trailers: list[Header]) -> None:
        if trailers:
            self.send_headers(sid, trailers, True)
        elif sid in self.streams:
            self.out.append(frame(DATA, END_STREAM, sid, b""))

    def reset_stream(self, sid: int, code: int) -> None:
        if self.streams.pop(sid, None) is not None:
            self.out.append(frame(RST_STREAM, 0, sid, U32.pack(code)))

    def forget(self, sid: int) -> None:
        """The stream is finished on the router's side (the client's late frames are
        ignored from now on)."""
        self.streams.pop(sid, None)

    def goaway(self, code: int) -> None:
        self.out.append(frame(GOAWAY, 0, 0, U32.pack(self.highest) + U32.pack(code)))

    def data_to_send(self) -> bytes:
        if not self.out:
            return b""
        data = b"".join(self.out)
        self.out = []
        return data


def unpad(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise H2Error(PROTOCOL_ERROR, "padding as long as the frame")
    return payload[1 : len(payload) - payload[0]]
