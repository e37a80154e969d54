"""The local control channel between the supervisor and one worker: framed messages.

Frame: 4-byte big-endian length, 1 byte kind, payload (pickled with router.workers.wire).
Supervisor -> worker: SNAPSHOT.
Worker -> supervisor: READY, ACK (snapshot version applied), REPORT (counters, loads,
passive outcomes).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

from router.workers import wire

SNAPSHOT, READY, ACK, REPORT = b"S", b"R", b"A", b"P"
_HEADER = struct.Struct(">IB")
MAX_FRAME = 64 * 1024 * 1024

Handler = Callable[[bytes, Any], None]


def frame(kind: bytes, payload: object) -> bytes:
    body = wire.dumps(payload)
    return _HEADER.pack(len(body), kind[0]) + body


class ChannelProtocol(asyncio.Protocol):
    """Reads frames and hands (kind, payload) to ``on_message``; ``send`` writes one."""

    def __init__(self, on_message: Handler, on_lost: Callable[[], None]) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while len(buf) >= _HEADER.size:
            length, kind = _HEADER.unpack_from(buf)
            if length > MAX_FRAME:
                self.close()
                return
            end = _HEADER.size + length
            if len(buf) < end:
                return
            payload = wire.loads(bytes(buf[_HEADER.size : end]))
            del buf[:end]
            self.on_message(bytes((kind,)), payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.on_lost()

    def send(self, kind: bytes, payload: object) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(frame(kind, payload))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
