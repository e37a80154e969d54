"""The socket-driven TLS transport (router/proxy/tlsio.py) and its accept loop, on real
sockets: flow control both ways, large writes, clients that vanish, handshake timeouts,
and many connections at once. The router-level behaviour is in test_tls_termination.py."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import trustme

from router.proxy.tlslisten import TlsListener
from tests.poll import eventually
from tests.tls import client_context, new_ca, open_tls

MiB = 1024 * 1024


@dataclass
class Seen:
    """What the server-side protocols went through."""

    made: int = 0
    lost: list[Exception | None] = field(default_factory=list)
    paused: int = 0
    resumed: int = 0
    eof: int = 0
    data: bytearray = field(default_factory=bytearray)
    paused_event: asyncio.Event = field(default_factory=asyncio.Event)
    lost_event: asyncio.Event = field(default_factory=asyncio.Event)


def pattern(size: int) -> bytes:
    """Non-repeating bytes, so a dropped or reordered chunk cannot go unnoticed."""
    blocks, n = [], 0
    while n < size:
        block = hashlib.sha256(n.to_bytes(8, "big")).digest() * 64
        blocks.append(block)
        n += len(block)
    return b"".join(blocks)[:size]


def digest(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


class Producer(asyncio.Protocol):
    """On the first read, writes ``size`` bytes in 64 KiB chunks while not paused."""

    def __init__(self, seen: Seen, size: int) -> None:
        self.seen, self.payload, self.offset = seen, pattern(size), 0
        self.transport: asyncio.Transport | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.seen.made += 1

    def data_received(self, data: bytes) -> None:
        self.seen.data += data
        if self.offset == 0:
            self._produce()

    def _produce(self) -> None:
        transport = self.transport
        assert transport is not None
        while not self.paused and self.offset < len(self.payload) and not transport.is_closing():
            transport.write(self.payload[self.offset : self.offset + 65536])
            self.offset += 65536
        if self.offset >= len(self.payload) and not transport.is_closing():
            transport.close()

    def pause_writing(self) -> None:
        self.paused = True
        self.seen.paused += 1
        self.seen.paused_event.set()

    def resume_writing(self) -> None:
        self.paused = False
        self.seen.resumed += 1
        self._produce()

    def eof_received(self) -> bool | None:
        self.seen.eof += 1
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.seen.lost.append(exc)
        self.seen.lost_event.set()


@pytest.fixture
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(ctx)
    return ctx


Listen = Callable[..., tuple[Seen, int]]


@pytest.fixture
async def listen(server_context: ssl.SSLContext) -> AsyncIterator[Listen]:
    """``seen, port = listen(Protocol, size)``: a TlsListener on 127.0.0.1 until the test
    ends, making ``Protocol(seen, size)`` (a Producer) per connection."""
    listeners: list[TlsListener] = []

    def start(
        protocol: type[Producer] = Producer, size: int = 0, timeout_s: float = 5.0
    ) -> tuple[Seen, int]:
        seen = Seen()
        listener = TlsListener(
            asyncio.get_running_loop(),
            "127.0.0.1",
            0,
            context=server_context,
            app_factory=lambda: protocol(seen, size),
            handshake_timeout_s=timeout_s,
            max_head=8192,
        )
        listeners.append(listener)
        return seen, int(listener.sockets[0].getsockname()[1])

    yield start
    for listener in listeners:
        listener.close()


async def test_a_client_that_stops_reading_pauses_the_protocol_and_then_gets_every_byte(
    listen: Listen, ca: trustme.CA
) -> None:
    size = 8 * MiB
    seen, port = listen(Producer, size)
    reader, writer = await open_tls(port, client_context(ca))
    writer.write(b"go")
    # The client reads nothing until the server's buffer passed its high mark.
    await asyncio.wait_for(seen.paused_event.wait(), 5)
    assert seen.resumed == 0
    got = await asyncio.wait_for(reader.read(), 10)  # to the server's close_notify
    writer.close()
    assert len(got) == size
    assert digest(got) == digest(pattern(size))  # (a digest: a failed == of MiBs takes ages)
    assert seen.paused >= 1 and seen.resumed >= 1
    await asyncio.wait_for(seen.lost_event.wait(), 5)
    assert seen.lost == [None]


async def test_a_large_write_arrives_intact_in_one_call(
    listen: Listen, ca: trustme.CA, server_context: ssl.SSLContext
) -> None:
    """One 32 MiB write: more than the socket takes, drained by the writer callback."""
    payload = pattern(32 * MiB)
    buffered: list[int] = []

    class OneWrite(Producer):
        def data_received(self, data: bytes) -> None:
            assert self.transport is not None
            self.transport.write(payload)
            buffered.append(self.transport.get_write_buffer_size())
            self.transport.close()

    seen, port = listen(OneWrite)
    reader, writer = await open_tls(port, client_context(ca))
    writer.write(b"go")
    got = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert len(got) == len(payload)
    assert digest(got) == digest(payload)
    assert buffered[0] > 0  # more than the socket took at once
    await asyncio.wait_for(seen.lost_event.wait(), 5)
    assert seen.lost == [None]


async def test_large_uploads_arrive_intact(listen: Listen, ca: trustme.CA) -> None:
    upload = pattern(8 * MiB)

    class Collector(Producer):
        def data_received(self, data: bytes) -> None:
            self.seen.data += data
            if len(self.seen.data) >= len(upload) and self.transport is not None:
                self.transport.write(digest(self.seen.data).encode())
                self.transport.close()

    _, port = listen(Collector)
    reader, writer = await open_tls(port, client_context(ca))
    writer.write(upload)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer == digest(upload).encode()


async def _true(value: bool) -> bool:
    return value


async def test_a_client_that_closes_mid_response_is_lost_once_with_no_error_left(
    listen: Listen, ca: trustme.CA
) -> None:
    seen, port = listen(Producer, 64 * MiB)  # far more than the client will take
    reader, writer = await open_tls(port, client_context(ca))
    writer.write(b"go")
    await asyncio.wait_for(reader.readexactly(MiB), 5)
    writer.transport.abort()  # a reset: the server is mid-write
    await asyncio.wait_for(seen.lost_event.wait(), 5)
    await asyncio.sleep(0)  # a second connection_lost would be scheduled by now
    assert len(seen.lost) == 1
    assert seen.made == 1


async def test_close_notify_from_the_client_reaches_eof_received(
    listen: Listen, ca: trustme.CA
) -> None:
    seen, port = listen()
    _, writer = await open_tls(port, client_context(ca))
    writer.close()  # asyncio's SSL transport sends close_notify
    await asyncio.wait_for(seen.lost_event.wait(), 5)
    assert seen.eof == 1
    assert seen.lost == [None]


@pytest.mark.parametrize("sends", [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"])
async def test_a_stalled_handshake_is_aborted_at_the_timeout(listen: Listen, sends: bytes) -> None:
    """Nothing sent, or a truncated ClientHello: closed at the deadline, no protocol made."""
    seen, port = listen(timeout_s=0.3)
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sends)
    started = loop.time()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    assert 0.2 <= loop.time() - started < 3
    writer.close()
    assert seen.made == 0


async def test_a_failed_handshake_closes_without_a_protocol(
    listen: Listen, server_context: ssl.SSLContext
) -> None:
    seen, port = listen()
    with pytest.raises(ssl.SSLError):  # the client does not trust this server's CA
        await open_tls(port, client_context(new_ca()))
    assert seen.made == 0


async def test_many_connections_at_once(listen: Listen, ca: trustme.CA) -> None:
    """More connections than one accept wakeup takes, all in the backlog together."""
    seen, port = listen(Producer, 1000)
    raw = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    for s in raw:
        s.setblocking(False)
    ctx = client_context(ca)  # one: each loads the system CAs, which takes milliseconds

    async def one(sock: socket.socket) -> bytes:
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=ctx, server_hostname="localhost"
        )
        writer.write(b"go")
        got = await reader.read()
        writer.close()
        return got

    results = await asyncio.wait_for(asyncio.gather(*(one(s) for s in raw)), 10)
    assert all(r == pattern(1000) for r in results)
    assert seen.made == 200


async def test_plain_bytes_on_the_port_leave_the_tls_path(
    listen: Listen, server_context: ssl.SSLContext
) -> None:
    """Not a TLS record: the listener's gate answers in clear text, no TLS protocol made."""
    seen, port = listen()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert seen.made == 0


async def test_extra_info_and_alpn(listen: Listen, ca: trustme.CA) -> None:
    got: dict[str, object] = {}

    class Info(Producer):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            for key in ("peername", "sockname", "ssl_object", "sslcontext", "peercert"):
                got[key] = transport.get_extra_info(key)
            got["closing"] = transport.is_closing()
            got["default"] = transport.get_extra_info("nonesuch", "d")

    seen, port = listen(Info)
    _, writer = await open_tls(port, client_context(ca))
    await eventually(lambda: _true(seen.made == 1), 5, "the connection")
    client_port = writer.get_extra_info("sockname")[1]
    writer.close()
    assert got["peername"] == ("127.0.0.1", client_port)
    assert got["sockname"] == ("127.0.0.1", port)
    assert isinstance(got["ssl_object"], ssl.SSLSocket)
    assert isinstance(got["sslcontext"], ssl.SSLContext)
    assert got["peercert"] is None  # no client certificate asked
    assert got["closing"] is False
    assert got["default"] == "d"
