"""What one small read costs a protocol on uvloop: ``asyncio.Protocol`` (uvloop copies each
read into a new ``bytes``) against ``asyncio.BufferedProtocol`` (uvloop reads into the
protocol's buffer; the protocol takes a view of it). Written to decide whether the upstream
connection should read into a buffer of its own; it was not adopted (docs/performance.md,
"Reads into the router's own buffer").

Two connected sockets in one loop ping-pong a 100-byte message, so every message is one
read and one write; each round runs both kinds once, in alternating order, and reports CPU
time per read (the write and the loop's turn included, the same in both).

    taskset -c 0 python bench/readcost.py [--messages 20000] [--rounds 8] [--size 100]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time

import uvloop


class _Counter:
    def __init__(self, limit: int, done: asyncio.Future[None]) -> None:
        self.limit = limit
        self.done = done
        self.reads = 0


class Plain(asyncio.Protocol):
    def __init__(self, counter: _Counter, message: bytes) -> None:
        self.counter = counter
        self.message = message
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        _answer(self.counter, self.transport, self.message, len(data))


class Buffered(asyncio.BufferedProtocol):
    def __init__(self, counter: _Counter, message: bytes) -> None:
        self.counter = counter
        self.message = message
        self.transport: asyncio.Transport | None = None
        self.view = memoryview(bytearray(256 * 1024))  # as the router's ReadBuffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        _answer(self.counter, self.transport, self.message, len(self.view[:nbytes]))


def _answer(
    counter: _Counter, transport: asyncio.Transport | None, message: bytes, size: int
) -> None:
    assert size and transport is not None
    counter.reads += 1
    if counter.reads < counter.limit:
        transport.write(message)
    elif not counter.done.done():
        counter.done.set_result(None)


async def one_run(kind: type[Plain] | type[Buffered], messages: int, size: int) -> float:
    """CPU microseconds per read over ``messages`` reads."""
    loop = asyncio.get_running_loop()
    message = b"x" * size
    counter = _Counter(messages, loop.create_future())
    a, b = socket.socketpair()
    ta, _ = await loop.connect_accepted_socket(lambda: kind(counter, message), a)
    tb, _ = await loop.connect_accepted_socket(lambda: kind(counter, message), b)
    start = time.process_time()
    ta.write(message)
    await counter.done
    cpu = time.process_time() - start
    ta.close()
    tb.close()
    return cpu / counter.reads * 1e6


async def main(messages: int, rounds: int, size: int) -> None:
    plain: list[float] = []
    buffered: list[float] = []
    for r in range(rounds):
        kinds: list[type[Plain] | type[Buffered]] = [Plain, Buffered]
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            (plain if kind is Plain else buffered).append(await one_run(kind, messages, size))
    ratios = [b / p for p, b in zip(plain, buffered, strict=True)]
    for name, runs in (("Protocol", plain), ("BufferedProtocol", buffered)):
        print(
            f"{name:17} CPU us per {size} B read: median {statistics.median(runs):.3f}, "
            f"min {min(runs):.3f}"
        )
    print(
        f"per-round ratio Buffered/Protocol: median {statistics.median(ratios):.3f} "
        f"({min(ratios):.3f}-{max(ratios):.3f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    uvloop.run(main(args.messages, args.rounds, args.size))
