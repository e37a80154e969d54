"""The https listener: its own accept loop, each connection on a ``TlsTransport``.

Bound as ``loop.create_server`` would bind it (every address of the host, backlog 4096,
``SO_REUSEPORT`` for workers), so the port, drain and workers behave the same; accepting
here rather than in uvloop lets each connection start on a socket OpenSSL drives itself
(router/proxy/tlsio.py). Plain HTTP on this port goes to ``TlsGate`` on a uvloop transport
for its clear-text 400.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

from router.proxy.tlsgate import TlsGate
from router.proxy.tlsio import TlsTransport

log = logging.getLogger("router.proxy.tlslisten")

_ACCEPTS_PER_WAKEUP = 64
_BACKLOG = 4096
_ACCEPT_RETRY_S = 1.0  # out of descriptors: stop accepting this long (as uvloop does)


def bind(host: str | None, port: int, *, reuse_port: bool, backlog: int) -> list[socket.socket]:
    """Non-blocking listening sockets on every address of ``host`` (all when None/"")."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Accepted sockets inherit it (Linux): no setsockopt per connection.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class TlsListener:
    """Accepts https connections until ``close``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str | None,
        port: int,
        *,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.BaseProtocol],
        handshake_timeout_s: float,
        max_head: int,
        reuse_port: bool = False,
    ) -> None:
        self.loop = loop
        # The front context: reloads update it in place (router/proxy/tls.py).
        self.context = context
        self.app_factory = app_factory
        self.handshake_timeout_s = handshake_timeout_s
        self.max_head = max_head
        self.sockets = bind(host, port, reuse_port=reuse_port, backlog=_BACKLOG)
        self.closed = False
        self.plain: set[asyncio.Task[object]] = set()
        for sock in self.sockets:
            self._listen(sock)

    def _listen(self, sock: socket.socket) -> None:
        if not self.closed:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, listening: socket.socket) -> None:
        loop = self.loop
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                sock, peer = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE/ENFILE/ENOBUFS: back off instead of spinning
                log.error("https: accept failed, pausing %gs: %s", _ACCEPT_RETRY_S, exc)
                loop.remove_reader(listening.fileno())
                loop.call_later(_ACCEPT_RETRY_S, self._listen, listening)
                return
            sock.setblocking(False)  # O_NONBLOCK is not inherited; TCP_NODELAY is (bind)
            TlsTransport(
                loop,
                sock,
                peer,
                self.context,
                self.app_factory,
                self._plain,
                loop.time() + self.handshake_timeout_s,
            ).start()

    def _plain(self, sock: socket.socket, deadline: float) -> None:
        """Plain HTTP on the https port: TlsGate answers it in clear text on a uvloop transport."""
        loop = self.loop
        gate = TlsGate(
            loop,
            self.app_factory,
            self.context,
            max(deadline - loop.time(), 0.001),
            self.max_head,
        )
        task: asyncio.Task[object] = loop.create_task(
            loop.connect_accepted_socket(lambda: gate, sock)
        )
        self.plain.add(task)
        task.add_done_callback(self._plain_done)

    def _plain_done(self, task: asyncio.Task[object]) -> None:
        self.plain.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("https: plain connection lost early: %s", task.exception())

    def close(self) -> None:
        """Stop accepting (connections already accepted are not affected)."""
        if self.closed:
            return
        self.closed = True
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()

    def __repr__(self) -> str:
        names = [sock.getsockname() for sock in self.sockets if sock.fileno() >= 0]
        return f"<TlsListener {names} closed={self.closed}>"
