"""The stateless HPACK encoder of HTTP/2 responses, decoded by an independent decoder
(the hpack library), and the framer's split of a large head into HEADERS + CONTINUATION."""

from __future__ import annotations

import hpack
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame

from router.proxy import h2hpack
from router.proxy.h2frames import Header
from router.proxy.h2wire import H2Framer


def decode(block: bytes, decoder: hpack.Decoder | None = None) -> list[tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in (decoder or hpack.Decoder()).decode(block, raw=True)]


def test_fields_decode_as_sent() -> None:
    fields = [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),  # a static name
        (b"content-length", b"100"),
        (b"x-router-region", b"eu-1"),  # a new name
        (b"set-cookie", b"a=" + b"x" * 300),  # a value of more than 127 bytes
        (b"x-" + b"n" * 200, b""),  # a long new name, an empty value
        (b"www-authenticate", b"Basic"),  # index 61: a prefix past 15 (RFC 7541 5.1)
    ]
    assert decode(h2hpack.encode(fields)) == fields


def test_every_status_and_no_table_change() -> None:
    decoder = hpack.Decoder()
    for status in (b"200", b"204", b"206", b"304", b"400", b"404", b"500", b"201", b"503"):
        block = h2hpack.encode([(b":status", status), (b"x-a", b"1")])
        assert decode(block, decoder) == [(b":status", status), (b"x-a", b"1")]
    assert h2hpack.encode([(b":status", b"200")]) == b"\x88"  # indexed, one byte
    # the client's dynamic table is never touched
    assert len(decoder.header_table.dynamic_entries) == 0


def test_integers_of_every_width() -> None:
    for value in (0, 14, 15, 16, 127, 128, 300, 16383, 16384, 2**21):
        encoded = h2hpack.integer(value, 4, 0)
        assert hpack.hpack.decode_integer(encoded, 4)[0] == value


class _Quiet:
    def on_request(self, stream_id: int, headers: list[Header], ended: bool) -> None: ...
    def on_data(self, stream_id: int, data: bytes, flow_len: int) -> None: ...
    def on_trailers(self, stream_id: int, headers: list[Header]) -> None: ...
    def on_end(self, stream_id: int) -> None: ...
    def on_reset(self, stream_id: int) -> None: ...
    def on_window(self, stream_id: int) -> None: ...
    def on_goaway(self) -> None: ...


def _frames(data: bytes) -> list[Frame]:
    frames = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    return frames


def test_a_head_larger_than_a_frame_goes_on_in_continuation() -> None:
    framer = H2Framer(
        _Quiet(),
        max_streams=10,
        max_header_bytes=65536,
        stream_window=65535,
        connection_window=65535,
    )
    request = hpack.Encoder().encode([(":method", "GET"), (":path", "/"), (":scheme", "http")])
    head = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # the client's SETTINGS
    head += HeadersFrame(1, request, flags=["END_HEADERS", "END_STREAM"]).serialize()
    assert framer.receive(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + head) == 0
    framer.data_to_send()
    fields = [(b":status", b"200"), *((b"x-h%d" % i, b"v" * 1000) for i in range(40))]
    framer.send_headers(1, fields, end_stream=True)
    frames = _frames(framer.data_to_send())
    assert isinstance(frames[0], HeadersFrame) and frames[0].flags == {"END_STREAM"}
    assert all(isinstance(f, ContinuationFrame) for f in frames[1:])
    assert [("END_HEADERS" in f.flags) for f in frames[1:]] == [False] * (len(frames) - 2) + [True]
    assert all(len(f.data) <= 16384 for f in frames)
    assert decode(b"".join(f.data for f in frames)) == fields


class _Requests(_Quiet):
    def __init__(self) -> None:
        self.requests: list[tuple[int, list[Header], bool]] = []

    def on_request(self, stream_id: int, headers: list[Header], ended: bool) -> None:
        self.requests.append((stream_id, headers, ended))


def test_bytes_arriving_one_at_a_time() -> None:
    # (over TLS the preface and frames may arrive in any pieces: ALPN h2 hands the framer
    # the connection's bytes as they come)
    handler = _Requests()
    framer = H2Framer(
        handler,
        max_streams=10,
        max_header_bytes=65536,
        stream_window=65535,
        connection_window=65535,
    )
    fields = [(":method", "GET"), (":path", "/a"), (":scheme", "https"), ("x-a", "1")]
    block = hpack.Encoder().encode(fields)
    wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    wire += HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
    for i in range(len(wire)):
        assert framer.receive(wire[i : i + 1]) == 0
    expected = [(n.encode(), v.encode()) for n, v in fields]
    assert handler.requests == [(1, expected, True)]
    assert framer.buf == b""
    bad = H2Framer(
        _Quiet(), max_streams=10, max_header_bytes=65536, stream_window=65535, connection_window=0
    )
    assert bad.receive(b"PRI * HTTP/1.1") == 0x1  # not the preface: PROTOCOL_ERROR
