"""The router's own HTTP/2 framing (router.proxy.h2wire) over a raw socket: CONTINUATION,
padding, SETTINGS and PING acknowledgements, window overflows and over-long frames, each
with the answer RFC 9113 gives; frames are built by hand or with hyperframe and hpack."""

from __future__ import annotations

import asyncio
import hashlib
import struct
from typing import Any

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.backends import probe_passes, start_region
from tests.conftest import StartRouter, make_config

AiohttpServer = Any
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x1, 0x3, 0x6
GET = [(":method", "GET"), (":scheme", "http"), (":authority", "a.test")]


def raw(ftype: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    n = len(payload)
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, ftype, flags, stream_id) + payload


class Conn:
    """One raw HTTP/2 connection: ``send`` bytes, ``until`` a frame arrives."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.frames: list[Frame] = []
        self.buf = b""
        self.eof = False

    @classmethod
    async def open(cls, port: int, settings: bytes | None = None) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = cls(reader, writer)
        conn.send(PREFACE + (settings or SettingsFrame(0).serialize()))
        return conn

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def until(self, check: Any, timeout_s: float = 5.0) -> Frame:
        """The first frame (so far or to come) for which ``check`` holds."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        seen = 0
        while True:
            for frame in self.frames[seen:]:
                if check(frame):
                    return frame
            seen = len(self.frames)
            left = deadline - asyncio.get_running_loop().time()
            if self.eof or left <= 0:
                raise AssertionError(f"no such frame; got {self.frames}")
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                continue
            self.eof = not data
            self.buf += data
            while len(self.buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) < 9 + length:
                    break
                frame.parse_body(memoryview(self.buf[9 : 9 + length]))
                self.buf = self.buf[9 + length :]
                self.frames.append(frame)

    async def goaway(self) -> int:
        frame = await self.until(lambda f: isinstance(f, GoAwayFrame))
        return int(frame.error_code)

    async def reset(self, stream_id: int) -> int:
        frame = await self.until(
            lambda f: isinstance(f, RstStreamFrame) and f.stream_id == stream_id
        )
        return int(frame.error_code)

    async def response(self, stream_id: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The stream's response head and body (a fresh decoder: the router never indexes)."""
        await self.until(lambda f: f.stream_id == stream_id and "END_STREAM" in f.flags)
        mine = [f for f in self.frames if f.stream_id == stream_id]
        block = b"".join(f.data for f in mine if isinstance(f, (HeadersFrame, ContinuationFrame)))
        body = b"".join(f.data for f in mine if isinstance(f, DataFrame))
        return hpack.Decoder().decode(block, raw=True), body

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def router(aiohttp_server: AiohttpServer, start_router: StartRouter) -> Any:
    region = await start_region(aiohttp_server, "r1")
    service = await start_router(
        make_config([region.config()], http2={"enabled": True}), probe=probe_passes
    )
    return service.proxy_port, region


async def test_settings_and_ping_are_acknowledged(router: Any) -> None:
    port, _ = router
    conn = await Conn.open(port)
    try:
        ours = await conn.until(lambda f: isinstance(f, SettingsFrame) and not f.flags)
        assert ours.settings[SettingsFrame.ENABLE_PUSH] == 0
        assert ours.settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 256 * 1024
        await conn.until(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
        conn.send(PingFrame(0, b"12345678").serialize())
        pong = await conn.until(lambda f: isinstance(f, PingFrame))
        assert pong.flags == {"ACK"} and pong.opaque_data == b"12345678"
        conn.send(SettingsFrame(0, flags=["ACK"]).serialize())  # our SETTINGS, acknowledged
        conn.send(raw(0x6, 0, 0, b"1234567"))  # a PING of 7 bytes
        assert await conn.goaway() == FRAME_SIZE_ERROR
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (raw(0x4, 0, 0, b"\x00\x04\x00\x00"), FRAME_SIZE_ERROR),  # SETTINGS not 6n bytes
        (raw(0x4, 0x1, 0, b"\x00" * 6), FRAME_SIZE_ERROR),  # SETTINGS ACK with a payload
        (raw(0x4, 0, 0, b"\x00\x05\x00\x00\x10\x00"), PROTOCOL_ERROR),  # MAX_FRAME_SIZE 4096
        (raw(0x4, 0, 0, b"\x00\x04\x80\x00\x00\x00"), FLOW_CONTROL_ERROR),  # window 2^31
        (raw(0x9, 0x4, 1, b""), PROTOCOL_ERROR),  # CONTINUATION with no HEADERS
        (raw(0x5, 0x4, 1, b"\x00\x00\x00\x02"), PROTOCOL_ERROR),  # PUSH_PROMISE from a client
        (raw(0x3, 0, 7, b"\x00\x00\x00\x08"), PROTOCOL_ERROR),  # RST_STREAM on an idle stream
        (raw(0x0, 0, 1, b"x" * 16385), FRAME_SIZE_ERROR),  # over SETTINGS_MAX_FRAME_SIZE
    ],
    ids=[
        "settings-length",
        "settings-ack-payload",
        "max-frame",
        "window",
        "continuation",
        "push",
        "rst-idle",
        "frame-size",
    ],
)
async def test_connection_errors(router: Any, frame: bytes, code: int) -> None:
    port, region = router
    conn = await Conn.open(port)
    try:
        conn.send(frame)
        assert await conn.goaway() == code
    finally:
        conn.close()
    assert region.seen == []


async def test_a_head_in_continuation_frames(router: Any) -> None:
    port, region = router
    block = hpack.Encoder().encode([*GET, (":path", "/split"), ("x-long", "v" * 3000)])
    conn = await Conn.open(port)
    try:
        conn.send(
            raw(0x1, 0x1, 1, block[:100])  # END_STREAM, no END_HEADERS
            + raw(0x9, 0, 1, block[100:1000])
            + raw(0x9, 0x4, 1, block[1000:])  # END_HEADERS
        )
        head, _ = await conn.response(1)
        assert (b":status", b"200") in head
        assert region.seen[-1].raw_path == "/split"
        assert region.seen[-1].header("x-long") == "v" * 3000
        # any other frame inside a header block is a connection error
        conn.send(raw(0x1, 0x1, 3, block[:100]) + PingFrame(0, b"12345678").serialize())
        assert await conn.goaway() == PROTOCOL_ERROR
    finally:
        conn.close()


async def test_padding_is_stripped_and_counted(router: Any) -> None:
    port, region = router
    head = hpack.Encoder().encode([(":method", "POST"), *GET[1:], (":path", "/echo")])
    # HEADERS with PADDED and PRIORITY: pad length, 5 priority bytes, the block, padding
    headers = raw(0x1, 0x4 | 0x8 | 0x20, 1, b"\x03" + b"\x00\x00\x00\x00\x10" + head + b"pad")
    data = raw(0x0, 0x1 | 0x8, 1, b"\x05" + b"hello" + b"\x00" * 5)  # END_STREAM, padded
    conn = await Conn.open(port)
    try:
        conn.send(headers + data)
        head_fields, _ = await conn.response(1)
        assert (b":status", b"200") in head_fields
        seen = region.seen[-1]
        assert seen.body_length == 5 and seen.body_sha256 == hashlib.sha256(b"hello").hexdigest()
        conn.send(raw(0x0, 0x8, 3, b"\x09" + b"x" * 8))  # padding as long as the frame
        assert await conn.goaway() == PROTOCOL_ERROR
    finally:
        conn.close()


async def test_window_updates_that_overflow(router: Any) -> None:
    port, _ = router
    conn = await Conn.open(port)
    block = hpack.Encoder().encode([*GET, (":path", "/delay/1")])
    try:
        conn.send(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        conn.send(WindowUpdateFrame(1, 2**31 - 1).serialize())  # 256 KiB + 2^31 - 1
        assert await conn.reset(1) == FLOW_CONTROL_ERROR  # a stream error only
        conn.send(WindowUpdateFrame(0, 2**31 - 1).serialize())  # the connection's
        assert await conn.goaway() == FLOW_CONTROL_ERROR
    finally:
        conn.close()


async def test_unknown_frames_and_priority_are_ignored(router: Any) -> None:
    port, _ = router
    block = hpack.Encoder().encode([*GET, (":path", "/ok")])
    conn = await Conn.open(port)
    try:
        conn.send(
            raw(0xFA, 0xFF, 0, b"whatever")  # an unknown type, on the connection
            + raw(0x2, 0, 5, b"\x00\x00\x00\x00\x10")  # PRIORITY for an idle stream
            + raw(0xFA, 0, 1, b"x")  # an unknown type on an idle stream
            + HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
        )
        head, _ = await conn.response(1)
        assert (b":status", b"200") in head
        assert not any(isinstance(f, (GoAwayFrame, RstStreamFrame)) for f in conn.frames)
    finally:
        conn.close()


async def test_the_client_window_paces_the_response(router: Any) -> None:
    port, _ = router
    # INITIAL_WINDOW_SIZE 1000 and MAX_FRAME_SIZE 16384: 1000 bytes, then wait for more
    settings = raw(0x4, 0, 0, b"\x00\x04\x00\x00\x03\xe8")
    block = hpack.Encoder().encode([*GET, (":path", "/bytes/5000")])
    conn = await Conn.open(port, settings)
    try:
        conn.send(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        await conn.until(lambda f: isinstance(f, DataFrame) and f.stream_id == 1)
        # nothing may follow while the window stays closed: a pause is the only way to
        # see that (the ping's answer only orders it after what was already written)
        await asyncio.sleep(0.2)
        got = sum(len(f.data) for f in conn.frames if isinstance(f, DataFrame))
        assert got == 1000
        conn.send(WindowUpdateFrame(1, 4000).serialize())
        _, body = await conn.response(1)
        assert len(body) == 5000
    finally:
        conn.close()


async def test_a_client_resetting_most_streams_is_sent_away(router: Any) -> None:
    # "Rapid reset" (CVE-2023-44487): each stream opened and reset at once would start a
    # region request for nothing; past 500 streams with half or more reset early, the
    # connection ends (GOAWAY ENHANCE_YOUR_CALM), as Envoy does.
    port, _ = router
    encoder = hpack.Encoder()
    conn = await Conn.open(port)
    try:
        payload = b""
        for sid in range(1, 1001, 2):  # 500 streams
            block = encoder.encode([*GET, (":path", "/delay/5")])
            payload += HeadersFrame(sid, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
            payload += raw(0x3, 0, sid, b"\x00\x00\x00\x08")  # RST_STREAM CANCEL
        conn.send(payload)
        assert await conn.goaway() == 0xB
    finally:
        conn.close()
    # a client that resets a few streams is not affected (test_http2's reset test), and
    # the router goes on serving others
    other = await Conn.open(port)
    try:
        block = hpack.Encoder().encode([*GET, (":path", "/ok")])
        other.send(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        head, _ = await other.response(1)
        assert (b":status", b"200") in head
    finally:
        other.close()
