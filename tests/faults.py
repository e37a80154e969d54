"""Network faults on loopback: a TCP relay in front of a region that can die or go gray.

``Relay(target_port)`` forwards bytes both ways. ``relay.blackhole()`` stops moving bytes
in both directions and keeps accepting new connections without answering (a partition
that still completes handshakes, the worst kind). ``relay.kill()`` resets every connection
and closes the listener, so new connects are refused (a crashed host). ``relay.heal()``
forwards again (new connections only).

``LoadResult`` / ``get_load`` drive N concurrent GET clients through a router and record
every answer: status, region, latency, start time.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp

_LINGER_RST = struct.pack("ii", 1, 0)  # close with RST, as a crashed host's kernel does


class Relay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.mode = "forward"  # forward | blackhole | dead
        self.blackholed_at = 0.0
        self.accepted_after_blackhole = 0
        self.bytes_after_blackhole = 0
        # (monotonic time, first line) of every read that reached the relay while not forwarding
        self.arrivals: list[tuple[float, bytes]] = []
        self._conns: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def reached_after_blackhole(self) -> bool:
        """A connection or a byte arrived since the blackhole began."""
        return self.accepted_after_blackhole + self.bytes_after_blackhole > 0

    def blackhole(self) -> None:
        self.mode = "blackhole"
        self.blackholed_at = time.monotonic()

    def heal(self) -> None:
        self.mode = "forward"

    async def kill(self) -> None:
        self.mode = "dead"
        if self.server is not None:
            self.server.close()
        for w in list(self._conns):
            _reset(w)
        self._conns.clear()

    async def close(self) -> None:
        await self.kill()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode != "forward":
            # Accepted, never answered: read (to see what arrives), hold the socket open.
            self.accepted_after_blackhole += 1
            self._conns.add(writer)
            try:
                while data := await reader.read(65536):
                    self._arrived(data)
            except (OSError, RuntimeError):
                pass
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _reset(writer)
            return
        self._conns.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if self.mode != "forward":
                    self._arrived(data)
                    await asyncio.Event().wait()  # stop moving bytes; hold the socket
                dst.write(data)
                await dst.drain()
        except (OSError, RuntimeError):
            pass
        finally:
            if self.mode == "forward":
                with contextlib.suppress(OSError, RuntimeError):
                    dst.close()
                self._conns.discard(dst)

    def _arrived(self, data: bytes) -> None:
        self.bytes_after_blackhole += len(data)
        self.arrivals.append((time.monotonic(), data.split(b"\r\n", 1)[0]))

    def requests_after(self, t: float) -> int:
        """Requests (not health probes) that reached the relay after monotonic time ``t``."""
        return sum(1 for at, line in self.arrivals if at >= t and b" /health" not in line)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


@contextlib.asynccontextmanager
async def relay_to(target_port: int) -> AsyncIterator[Relay]:
    relay = Relay(target_port)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.close()


@dataclass(slots=True)
class Answer:
    started: float  # monotonic
    latency_s: float
    status: int  # 0: the connection failed (no HTTP answer)
    region: str


@dataclass
class LoadResult:
    answers: list[Answer] = field(default_factory=list)

    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]

    def by_status(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for a in self.answers:
            out[a.status] = out.get(a.status, 0) + 1
        return out


async def get_load(
    url: str, clients: int, stop: asyncio.Event, result: LoadResult, *, timeout_s: float = 60.0
) -> None:
    """``clients`` keep-alive GET loops until ``stop`` is set; every answer lands in ``result``."""
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one_client() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                status, region = 0, ""
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        status, region = resp.status, resp.headers.get("X-Router-Region", "")
                except (aiohttp.ClientError, TimeoutError):
                    pass
                result.answers.append(Answer(t0, time.monotonic() - t0, status, region))

        await asyncio.gather(*(one_client() for _ in range(clients)))


def count(answers: list[Answer], keep: Callable[[Answer], bool]) -> int:
    return sum(1 for a in answers if keep(a))
