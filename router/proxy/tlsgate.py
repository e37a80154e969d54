"""The https listener's first read: TLS goes on to the SSL layer, plain HTTP gets a 400.

Like nginx, the first byte decides: a TLS connection starts with a handshake record
(``0x16``); anything else is answered in clear text with a 400 ("The plain HTTP request was
sent to HTTPS port") once its head is in, and closed. The gate then hands the transport to
the loop's own SSL protocol (uvloop's, the same one ``create_server(ssl=...)`` would have
used) and feeds it that first read, so from there on it costs nothing.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

import uvloop.loop

from router.errors import PlainHttpOnTls
from router.proxy.headers import error_response

_HANDSHAKE = 0x16  # TLS record type of a ClientHello
_SSLV2_HELLO = 0x80  # high bit set: an SSLv2-format ClientHello (OpenSSL refuses it itself)
_HEAD_END = b"\r\n\r\n"
# How long a refused plain client may keep sending before the socket closes: enough for its
# request body to drain so closing does not reset the connection before it reads the 400.
_LINGER_S = 2.0

# uvloop's SSL protocol (the router always runs on uvloop); not in uvloop's type stubs.
_SSL_PROTOCOL: Any = uvloop.loop.SSLProtocol  # type: ignore[attr-defined]


class TlsGate(asyncio.Protocol):
    """One accepted https connection until its first read says what it speaks."""

    __slots__ = (
        "answered",
        "app_factory",
        "context",
        "deadline",
        "head",
        "loop",
        "max_head",
        "timer",
        "transport",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        app_factory: Callable[[], asyncio.BaseProtocol],
        context: ssl.SSLContext,
        handshake_timeout_s: float,
        max_head: int,
    ) -> None:
        self.loop = loop
        self.app_factory = app_factory
        self.context = context
        self.deadline = loop.time() + handshake_timeout_s
        self.max_head = max_head
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.head: bytes | None = None  # plain HTTP: the head read so far
        self.answered = False  # plain HTTP: the 400 was sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport
        # A client that sends nothing is closed at the handshake timeout.
        self.timer = self.loop.call_at(self.deadline, transport.abort)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            self._plain(data)
        elif data[0] == _HANDSHAKE or data[0] & _SSLV2_HELLO:
            self._start_tls(data)
        else:
            self.head = b""
            self._plain(data)

    def eof_received(self) -> bool | None:
        return False  # closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _start_tls(self, data: bytes) -> None:
        """Hand over to the SSL protocol, which owns the rest of the handshake timeout."""
        transport, loop = self.transport, self.loop
        assert transport is not None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        protocol = _SSL_PROTOCOL(
            loop,
            self.app_factory(),
            self.context,
            None,  # no waiter: nobody awaits a server-side handshake
            server_side=True,
            ssl_handshake_timeout=max(self.deadline - loop.time(), 0.001),
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        view = memoryview(data)
        while view and not transport.is_closing():
            buf = protocol.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]

    def _plain(self, data: bytes) -> None:
        """Collect a plain request's head, then answer 400 in clear text."""
        transport = self.transport
        assert transport is not None and self.head is not None
        if self.answered:
            return  # draining what the client still sends, until it closes or the linger
        head = self.head + data
        if _HEAD_END not in head and len(head) <= self.max_head:
            self.head = head
            return
        self.answered, self.head = True, b""
        error = PlainHttpOnTls("The plain HTTP request was sent to HTTPS port")
        transport.write(error_response(error, None, close=True))
        if transport.can_write_eof():
            transport.write_eof()
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(_LINGER_S, transport.abort)

    def __repr__(self) -> str:
        state = "tls?" if self.head is None else "plain"
        return f"<TlsGate {state}>"
