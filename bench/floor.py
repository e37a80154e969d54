"""The floor: how fast a keep-alive HTTP/1.1 proxy can be in Python on this event loop.

`python bench/floor.py PORT BACKEND_PORT [--splice]` (bench/targets.py starts it as the
`floor` and `floor-splice` targets). A measuring stick, not a proxy:

- **relay** (default): uvloop `Protocol`s, one backend connection per client connection,
  bytes passed on as read. Nothing is parsed, routed, counted or logged. It is correct only
  for what the benchmark does: a client that waits for each response (wrk, no
  pipelining) and a backend that answers each request once.
- **--splice**: non-blocking sockets on `add_reader`/`add_writer`. The response head is
  read (at most 4 KiB), its Content-Length taken, and the rest of the body goes backend
  socket -> pipe -> client socket by `splice(2)`, never entering user space. uvloop's
  transports read everything a socket holds into their own buffer, so the router cannot do
  this; the figures show what it would buy (docs/performance.md, "The floor").

What the router costs beyond `floor` is its features: both HTTP parsers, routing,
headers, counters and the access log.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import socket
from collections.abc import Callable

import uvloop

HEAD_READ = 4096  # the splice mode's head read: the body past it stays in the kernel
PIPE_SIZE = 1 << 20  # the splice pipe's capacity (F_SETPIPE_SZ)
F_SETPIPE_SZ = 1031  # <linux/fcntl.h>; Python's fcntl has it from 3.10 on some builds only
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


# -- relay: uvloop protocols ---------------------------------------------------------------


class BackendSide(asyncio.Protocol):
    def __init__(self, client: ClientSide) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def pause_writing(self) -> None:
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class ClientSide(asyncio.Protocol):
    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.backend: asyncio.Transport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.connecting = asyncio.get_running_loop().create_task(self._connect())  # held: a task

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            backend, _ = await loop.create_connection(
                lambda: BackendSide(self), "127.0.0.1", self.backend_port
            )
        except OSError:
            self.transport.close()
            return
        if self.transport.is_closing():
            backend.close()
            return
        self.backend = backend
        for data in self.pending:
            backend.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.backend is None:
            self.pending.append(data)
        else:
            self.backend.write(data)

    def pause_writing(self) -> None:
        if self.backend is not None:
            self.backend.pause_reading()

    def resume_writing(self) -> None:
        if self.backend is not None:
            self.backend.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.backend is not None:
            self.backend.close()


# -- splice: raw sockets, the body kernel to kernel ------------------------------------------


class Sender:
    """Bytes to one non-blocking socket, in order; what it cannot take waits for writable."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        drained: Callable[[], None],
        failed: Callable[[], None],
    ) -> None:
        self.loop = loop
        self.failed = failed
        self.sock = sock
        self.fd = sock.fileno()
        self.pending = bytearray()
        self.drained = drained  # called once the pending bytes are all sent

    def send(self, data: bytes | bytearray, more: bool = False) -> None:
        """``more``: bytes follow at once (MSG_MORE: one segment with them, not two)."""
        if self.pending:
            self.pending += data
            return
        try:
            sent = self.sock.send(data, socket.MSG_MORE if more else 0)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.failed()
            return
        if sent < len(data):
            self.pending += memoryview(data)[sent:]
            self.loop.add_writer(self.fd, self._flush)

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.pending)
        except BlockingIOError:
            return
        except OSError:
            self.failed()
            return
        del self.pending[:sent]
        if not self.pending:
            self.loop.remove_writer(self.fd)
            self.drained()


class SplicePair:
    """One client connection and its backend connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: socket.socket, port: int):
        self.loop = loop
        self.client, self.cfd = client, client.fileno()
        backend = socket.create_connection(("127.0.0.1", port))
        self.backend, self.bfd = backend, backend.fileno()
        for sock in (client, backend):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.to_client = Sender(loop, client, self._pump, self.close)
        self.to_backend = Sender(loop, backend, lambda: None, self.close)
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        fcntl.fcntl(self.pipe_w, F_SETPIPE_SZ, PIPE_SIZE)
        self.requests = b""
        self.head = bytearray()
        self.head_buf = bytearray(HEAD_READ)
        self.body_left = 0  # body bytes still in the backend socket
        self.in_pipe = 0  # body bytes in the pipe, not yet in the client socket
        self.reading_backend = True
        self.closed = False
        loop.add_reader(self.cfd, self._guard(self._on_client))
        loop.add_reader(self.bfd, self._guard(self._on_backend))

    def _guard(self, handler: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                handler()
            except OSError:
                self.close()

        return run

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in (self.cfd, self.bfd):
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
        self.client.close()
        self.backend.close()
        os.close(self.pipe_r)
        os.close(self.pipe_w)

    def _on_client(self) -> None:
        data = self.client.recv(65536)
        if not data:
            self.close()
            return
        self.requests += data
        while (end := self.requests.find(b"\r\n\r\n")) >= 0:  # GETs: a request is its head
            self.to_backend.send(self.requests[: end + 4])
            self.requests = self.requests[end + 4 :]

    def _on_backend(self) -> None:
        if self.body_left:
            self._pump()
            return
        read = self.backend.recv_into(self.head_buf)
        if read == 0:
            self.close()
            return
        self.head += memoryview(self.head_buf)[:read]
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        length = content_length(bytes(self.head[:end]))
        past_head = len(self.head) - end - 4
        self.body_left = length - past_head
        self.to_client.send(self.head, more=self.body_left > 0)
        self.head = bytearray()
        if self.body_left:
            self._pump()

    def _pump(self) -> None:
        """Move body bytes: backend -> pipe while the client keeps up, pipe -> client."""
        while not self.closed:
            moved = -1  # -1: nothing came from the backend this turn
            if self.body_left and self.in_pipe < PIPE_SIZE:
                try:
                    moved = os.splice(self.bfd, self.pipe_w, self.body_left, flags=SPLICE_FLAGS)
                except BlockingIOError:
                    moved = -1
                if moved == 0:
                    self.close()
                    return
                if moved > 0:
                    self.body_left -= moved
                    self.in_pipe += moved
            if self.in_pipe:
                if self.to_client.pending:
                    self._read_backend(False)  # the head goes first; drained() pumps again
                    return
                try:
                    out = os.splice(self.pipe_r, self.cfd, self.in_pipe, flags=SPLICE_FLAGS)
                except BlockingIOError:
                    out = 0
                self.in_pipe -= out
                if self.in_pipe and out == 0:
                    # The client is full: stop reading the backend until it drains.
                    self._read_backend(False)
                    self.loop.add_writer(self.cfd, self._guard(self._client_writable))
                    return
            if not self.in_pipe and (not self.body_left or moved < 0):
                self._read_backend(True)  # the response is out, or the backend has no more yet
                return

    def _client_writable(self) -> None:
        self.loop.remove_writer(self.cfd)
        self._pump()

    def _read_backend(self, on: bool) -> None:
        if on != self.reading_backend and not self.closed:
            self.reading_backend = on
            if on:
                self.loop.add_reader(self.bfd, self._guard(self._on_backend))
            else:
                self.loop.remove_reader(self.bfd)


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ValueError("the floor's splice mode needs a Content-Length response")


# -- main ----------------------------------------------------------------------------------


async def serve(port: int, backend_port: int, splice: bool) -> None:
    loop = asyncio.get_running_loop()
    if not splice:
        await loop.create_server(lambda: ClientSide(backend_port), "127.0.0.1", port, backlog=1024)
    else:
        listener = socket.create_server(("127.0.0.1", port), backlog=1024)
        listener.setblocking(False)
        pairs: set[SplicePair] = set()

        def accept() -> None:
            while True:
                try:
                    client, _ = listener.accept()
                except BlockingIOError:
                    return
                pairs.add(SplicePair(loop, client, backend_port))
                pairs.difference_update([p for p in pairs if p.closed])

        loop.add_reader(listener.fileno(), accept)
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("backend_port", type=int)
    parser.add_argument("--splice", action="store_true")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.backend_port, args.splice))


if __name__ == "__main__":
    main()
