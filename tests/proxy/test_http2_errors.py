"""Malformed HTTP/2 gets the RFC's answer (RST_STREAM or GOAWAY with the error's code),
is never forwarded, and never takes the router down: each case over a raw socket, frames
built with hyperframe and hpack."""

from __future__ import annotations

import asyncio
from typing import Any

import hpack
import pytest
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.backends import probe_passes, start_region
from tests.conftest import StartRouter, make_config
from tests.h2client import H2Client

AiohttpServer = Any
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PROTOCOL_ERROR, COMPRESSION_ERROR = 0x1, 0x9
GOOD = [(":method", "GET"), (":scheme", "http"), (":authority", "a.test"), (":path", "/x")]


def headers_frame(fields: list[tuple[str, str]], stream_id: int = 1) -> bytes:
    frame = HeadersFrame(stream_id)
    frame.data = hpack.Encoder().encode(fields)
    frame.flags.add("END_HEADERS")
    frame.flags.add("END_STREAM")
    return frame.serialize()


def window_update(stream_id: int, increment: int) -> bytes:
    # hyperframe refuses to build an increment of 0 itself: the frame is written by hand.
    payload = increment.to_bytes(4, "big")
    return b"\x00\x00\x04\x08\x00" + stream_id.to_bytes(4, "big") + payload


def data_on_stream_zero() -> bytes:
    return b"\x00\x00\x02\x00\x00\x00\x00\x00\x00hi"


async def answer(
    port: int, payload: bytes, timeout_s: float = 5.0, *, ended: int = 0
) -> list[Frame]:
    """Frames the router sends after ``payload``, until it closes or goes quiet, or (with
    ``ended``) until that many streams have ended (END_STREAM)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(PREFACE + SettingsFrame(0).serialize() + payload)
    frames: list[Frame] = []
    buf = b""
    try:
        while True:
            try:
                quiet = timeout_s if ended or not frames else 0.5
                data = await asyncio.wait_for(reader.read(65536), quiet)
            except TimeoutError:
                break
            if not data:
                break
            buf += data
            while len(buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
                if len(buf) < 9 + length:
                    break
                frame.parse_body(memoryview(buf[9 : 9 + length]))
                buf = buf[9 + length :]
                frames.append(frame)
            if ended:
                if sum("END_STREAM" in f.flags for f in frames) >= ended:
                    break
            elif any(isinstance(f, (RstStreamFrame, GoAwayFrame)) for f in frames):
                break
    finally:
        writer.close()
    return frames


def reset_code(frames: list[Frame], stream_id: int = 1) -> int | None:
    for f in frames:
        if isinstance(f, RstStreamFrame) and f.stream_id == stream_id:
            return int(f.error_code)
    return None


def goaway_code(frames: list[Frame]) -> int | None:
    for f in frames:
        if isinstance(f, GoAwayFrame):
            return int(f.error_code)
    return None


STREAM_ERRORS = {
    "uppercase name": [*GOOD, ("X-Upper", "1")],
    "connection-specific": [*GOOD, ("connection", "keep-alive")],
    "transfer-encoding": [*GOOD, ("transfer-encoding", "chunked")],
    "te not trailers": [*GOOD, ("te", "gzip")],
    "pseudo after regular": [*GOOD[:3], ("accept", "*/*"), GOOD[3]],
    "missing :path": GOOD[:3],
    "unknown pseudo": [*GOOD, (":protocol", "x")],
    "CR in a value": [*GOOD, ("x-a", "b\r\nx-injected: 1")],
    "duplicate :path": [*GOOD, (":path", "/y")],
}


@pytest.fixture
async def router_port(aiohttp_server: AiohttpServer, start_router: StartRouter) -> Any:
    region = await start_region(aiohttp_server, "r1")
    service = await start_router(
        make_config([region.config()], http2={"enabled": True}), probe=probe_passes
    )
    return service.proxy_port, region


async def _still_serves(port: int) -> None:
    client = H2Client()
    await client.connect(port)
    try:
        assert (await client.request("/ok")).status == 200
    finally:
        await client.close()


@pytest.mark.parametrize("case", sorted(STREAM_ERRORS))
async def test_malformed_request_heads_are_reset(router_port: Any, case: str) -> None:
    port, region = router_port
    frames = await answer(port, headers_frame(STREAM_ERRORS[case]))
    assert reset_code(frames) == PROTOCOL_ERROR, frames
    assert region.seen == []  # nothing forwarded
    await _still_serves(port)


async def test_connection_errors_get_goaway(router_port: Any) -> None:
    port, region = router_port
    assert goaway_code(await answer(port, data_on_stream_zero())) == PROTOCOL_ERROR
    assert goaway_code(await answer(port, window_update(0, 0))) == PROTOCOL_ERROR
    # index 70 of an empty dynamic table: no such entry (RFC 7541 2.3.3)
    bad_hpack = HeadersFrame(1)
    bad_hpack.data = b"\x82\x86\xc6"
    bad_hpack.flags.add("END_HEADERS")
    bad_hpack.flags.add("END_STREAM")
    assert goaway_code(await answer(port, bad_hpack.serialize())) == COMPRESSION_ERROR
    assert region.seen == []
    await _still_serves(port)


async def test_window_update_zero_on_a_stream(router_port: Any) -> None:
    port, _ = router_port
    head = HeadersFrame(1)
    head.data = hpack.Encoder().encode([*GOOD[:3], (":path", "/delay/1")])
    head.flags.add("END_HEADERS")
    head.flags.add("END_STREAM")
    frames = await answer(port, head.serialize() + window_update(1, 0))
    assert reset_code(frames) == PROTOCOL_ERROR or goaway_code(frames) == PROTOCOL_ERROR
    await _still_serves(port)


async def test_data_after_end_stream_and_garbage(router_port: Any) -> None:
    port, _ = router_port
    late = DataFrame(1)
    late.data = b"late"
    frames = await answer(port, headers_frame(GOOD) + late.serialize())
    assert reset_code(frames) is not None or goaway_code(frames) is not None
    frames = await answer(port, b"\xff" * 20000)  # a frame header announcing 16 MiB
    assert goaway_code(frames) == 0x6  # FRAME_SIZE_ERROR
    await _still_serves(port)


async def test_a_stream_over_the_limit_is_refused_alone(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region = await start_region(aiohttp_server, "r1")
    service = await start_router(
        make_config([region.config()], http2={"enabled": True, "max_concurrent_streams": 2}),
        probe=probe_passes,
    )
    slow = [*GOOD[:3], (":path", "/delay/0.5")]
    payload = b"".join(headers_frame(slow, sid) for sid in (1, 3, 5))
    frames = await answer(service.proxy_port, payload, ended=2)
    assert reset_code(frames, 5) == 0x7  # REFUSED_STREAM: safe to retry
    assert goaway_code(frames) is None
    assert reset_code(frames, 1) is None and reset_code(frames, 3) is None
    heads = {f.stream_id for f in frames if isinstance(f, HeadersFrame)}
    assert heads == {1, 3}  # the two within the limit were answered
