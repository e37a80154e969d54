"""An https connection's transport: OpenSSL reads and writes the socket itself.

uvloop's SSL protocol runs every byte through memory BIOs and its own Python-level state
machine; here OpenSSL does the socket I/O in C, driven by ``add_reader`` and ``add_writer``
(level-triggered), which costs less per new connection (docs/tls.md, bench/results/tls.md).
The connection is ``_ssl._SSLSocket``, the C object inside every ``ssl.SSLSocket``, made by
``SSLContext._wrap_socket`` on the accepted socket: the ``ssl.SSLSocket`` around it is a
second socket object whose construction and per-call wrappers (an ``ioctl`` re-setting the
timeout on every ``do_handshake``) cost more per connection than anything else of ours
around the handshake. This transport is the C object's ``owner``: OpenSSL's SNI callback
gets it as its ``conn`` and switches ``conn.context`` (router/proxy/tls.py). One object per
connection, in four phases:

- peek: the first byte decides, as nginx does: a TLS record (``0x16``, or an SSLv2-format
  hello) goes on to the handshake; anything else is handed back (``on_plain``) to be
  answered in clear text, with the socket untouched (``MSG_PEEK``);
- handshake, with one deadline from accept on;
- open: the protocol's ``asyncio.Transport``: reads go to ``data_received``, writes go
  straight to ``send`` and are buffered only when the socket is full (with the usual
  high/low marks and pause_writing/resume_writing);
- closing: the buffer flushes, then close_notify; the socket then lingers (what the client
  still sends read and dropped) until the client's close_notify or EOF, or ``_LINGER_S``,
  so a client's unread bytes cannot turn our close into a reset that destroys the response
  before the client reads it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any, Protocol

_HANDSHAKE = 0x16  # TLS record type of a ClientHello
_SSLV2_HELLO = 0x80  # high bit set: an SSLv2-format ClientHello (OpenSSL refuses it itself)
_RECORD = 16384  # a full TLS record's plaintext: more may be waiting in the same read
_READ_BUDGET = 256 * 1024  # per readable event, like uvloop's read buffer
_HIGH_WATER = 64 * 1024  # asyncio's default write-buffer limits
_LINGER_S = 2.0

_PEEK = 0
_HANDSHAKING = 1
_OPEN = 2
_CLOSING = 3  # flushing the buffer before close_notify
_LINGER = 4  # close_notify sent, draining until the client's (or its EOF)
_CLOSED = 5

# Not having the bytes yet, or not being able to send them yet: wait for the socket.
_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class SslConnection(Protocol):
    """What this transport uses of ``_ssl._SSLSocket`` (untyped in typeshed)."""

    context: ssl.SSLContext

    def do_handshake(self) -> None: ...
    def read(self, size: int) -> bytes: ...
    def write(self, data: bytes | bytearray | memoryview) -> int: ...
    def pending(self) -> int: ...
    def shutdown(self) -> socket.socket: ...
    def selected_alpn_protocol(self) -> str | None: ...
    def getpeercert(self) -> Any: ...
    def cipher(self) -> tuple[str, str, int] | None: ...
    def compression(self) -> str | None: ...


class TlsTransport(asyncio.Transport):
    """One accepted https connection (see the module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        peer: Any,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.BaseProtocol],
        on_plain: Callable[[socket.socket, float], None],
        deadline: float,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.tls: SslConnection | None = None
        self.peer = peer
        self.front = context
        self.app_factory = app_factory
        self.on_plain = on_plain
        self.deadline = deadline
        self.protocol: asyncio.Protocol | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.state = _PEEK
        self.reading = False  # a reader is registered
        self.writing = False  # a writer is registered
        self.read_paused = False  # the protocol asked
        self.read_wants_write = False  # a read needs the socket writable first
        self.buffer = bytearray()
        self.high = _HIGH_WATER
        self.low = _HIGH_WATER // 4
        self.write_paused = False  # the protocol was told pause_writing
        self.lost = False

    @property
    def context(self) -> ssl.SSLContext:
        """The connection's SSL context: the listener's, until SNI switches it."""
        tls = self.tls
        return self.front if tls is None else tls.context

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:
        # OpenSSL's SNI callback (router/proxy/tls.py), mid-handshake: ``tls`` is set.
        tls = self.tls
        assert tls is not None
        tls.context = context

    def start(self) -> None:
        """Arm the handshake deadline and look at the first byte (often already there)."""
        self.timer = self.loop.call_at(self.deadline, self._expire)
        self._peek()

    # -- event-loop callbacks ------------------------------------------------------------

    def _on_readable(self) -> None:
        state = self.state
        if state == _OPEN:
            self._read()
        elif state == _HANDSHAKING:
            self._handshake()
        elif state == _PEEK:
            self._peek()
        elif state == _LINGER:
            self._drain()

    def _on_writable(self) -> None:
        if self.state == _HANDSHAKING:
            self._handshake()
            return
        if self.read_wants_write:
            self.read_wants_write = False
            if not self.buffer:
                self._want_write(False)
            if self.state == _OPEN and not self.read_paused:
                self._read()
        if self.buffer and self.state in (_OPEN, _CLOSING):
            self._flush()

    def _expire(self) -> None:
        """The handshake deadline (or the linger) passed."""
        self.timer = None
        self._destroy(None)

    # -- phases --------------------------------------------------------------------------

    def _peek(self) -> None:
        try:
            first = self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            self._want_read(True)
            return
        except OSError:
            self._destroy(None)
            return
        if not first:
            self._destroy(None)
        elif first[0] == _HANDSHAKE or first[0] & _SSLV2_HELLO:
            self._start_tls()
        else:
            # Plain HTTP: the socket, with its bytes unread, goes to the clear-text refusal.
            self._want_read(False)
            self._cancel_timer()
            self.state = _CLOSED
            self.on_plain(self.sock, self.deadline)

    def _start_tls(self) -> None:
        try:
            # The C object alone (module docstring); it holds ``sock`` weakly, ``self`` keeps it.
            tls: SslConnection = self.front._wrap_socket(  # type: ignore[attr-defined]
                self.sock, True, None, owner=self, session=None
            )
        except (OSError, ValueError):
            self._destroy(None)
            return
        self.tls = tls
        self.state = _HANDSHAKING
        self._handshake()

    def _handshake(self) -> None:
        tls = self.tls
        assert tls is not None
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            self._want_write(False)
            self._want_read(True)
            return
        except ssl.SSLWantWriteError:
            self._want_write(True)
            return
        except (OSError, ValueError):  # ssl.SSLError is an OSError: a failed handshake
            self._destroy(None)
            return
        self._cancel_timer()
        self._want_write(False)
        self.state = _OPEN
        protocol = self.app_factory()
        assert isinstance(protocol, asyncio.Protocol)
        self.protocol = protocol
        protocol.connection_made(self)
        if self.state == _OPEN and not self.read_paused:
            self._want_read(True)
            self._read()  # the request often came with the client's Finished

    def _read(self) -> None:
        tls = self.tls
        assert tls is not None
        try:
            data = tls.read(_READ_BUDGET)
            # A full record may have more behind it; read on while it is cheap to ask.
            while tls.pending() or _RECORD <= len(data) < _READ_BUDGET:
                try:
                    more = tls.read(max(_RECORD, _READ_BUDGET - len(data)))
                except _WANT:
                    break
                if not more:
                    break
                data += more
        except ssl.SSLWantReadError:
            return
        except ssl.SSLWantWriteError:
            self.read_wants_write = True
            self._want_write(True)
            return
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            data = b""
        except OSError as exc:
            self._destroy(exc)
            return
        protocol = self.protocol
        assert protocol is not None
        if data:
            protocol.data_received(data)
            return
        # The client closed (close_notify, or a bare FIN). As with uvloop's SSL transport,
        # TLS has no half-close: whatever eof_received says, the connection closes.
        self._want_read(False)
        protocol.eof_received()
        self.close()

    def _flush(self) -> None:
        tls = self.tls
        assert tls is not None
        buffer = self.buffer
        try:
            sent = tls.write(buffer)
        except _WANT:
            return
        except OSError as exc:
            self._destroy(exc)
            return
        del buffer[:sent]
        if buffer:
            return
        if not self.read_wants_write:
            self._want_write(False)
        if self.state == _CLOSING:
            self._shutdown()
        elif self.write_paused:
            self._resume_protocol()
        return

    def _shutdown(self) -> None:
        """close_notify; then linger for the client's, or close now if it came already."""
        tls = self.tls
        assert tls is not None
        self._want_write(False)
        try:
            tls.shutdown()  # sends close_notify; done only if the client's already came
        except (OSError, ValueError):  # SSLWantRead: the client's close_notify is to come
            pass
        else:
            self._destroy(None)
            return
        # No FIN yet: like uvloop's SSL transport, wait for the client's close_notify, so a
        # client still reading what it buffered never sees the TCP close first (uvloop's
        # own client drops those bytes when it does).
        self.state = _LINGER
        self.timer = self.loop.call_later(_LINGER_S, self._expire)
        self._want_read(True)
        if self.protocol is not None:  # the connection is over for the protocol
            self.loop.call_soon(self._connection_lost, None)

    def _drain(self) -> None:
        """Lingering: drop what the client still sends until its close_notify or EOF."""
        tls = self.tls
        assert tls is not None
        try:
            for _ in range(16):  # bounded: a client that keeps sending meets the timer
                if not tls.read(_READ_BUDGET):
                    break
            else:
                return
        except _WANT:
            return
        except (OSError, ValueError):
            pass
        self._destroy(None)

    # -- helpers -------------------------------------------------------------------------

    def _want_read(self, on: bool) -> None:
        if on and not self.reading:
            self.loop.add_reader(self.fd, self._on_readable)
            self.reading = True
        elif not on and self.reading:
            self.loop.remove_reader(self.fd)
            self.reading = False

    def _want_write(self, on: bool) -> None:
        if on and not self.writing:
            self.loop.add_writer(self.fd, self._on_writable)
            self.writing = True
        elif not on and self.writing:
            self.loop.remove_writer(self.fd)
            self.writing = False

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _pause_protocol(self) -> None:
        if not self.write_paused and len(self.buffer) > self.high:
            self.write_paused = True
            protocol = self.protocol
            assert protocol is not None
            protocol.pause_writing()

    def _resume_protocol(self) -> None:
        if self.write_paused and len(self.buffer) <= self.low:
            self.write_paused = False
            protocol = self.protocol
            assert protocol is not None
            protocol.resume_writing()

    def _destroy(self, exc: Exception | None) -> None:
        """Close the socket now; the protocol (if any) hears connection_lost once, soon."""
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        self._cancel_timer()
        self._want_read(False)
        self._want_write(False)
        self.buffer.clear()
        self.sock.close()
        if self.protocol is not None:
            self.loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        protocol = self.protocol
        if self.lost or protocol is None:
            return
        self.lost = True
        protocol.connection_lost(exc)

    # -- asyncio.Transport ---------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.state != _OPEN or not data:
            return
        buffer = self.buffer
        if buffer:
            buffer += data
            self._pause_protocol()
            return
        tls = self.tls
        assert tls is not None
        try:
            sent = tls.write(data)
        except _WANT:
            sent = 0
        except OSError as exc:
            self._destroy(exc)
            return
        if sent < len(data):
            buffer += memoryview(data)[sent:]
            self._want_write(True)
            self._pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot half-close")

    def get_write_buffer_size(self) -> int:
        return len(self.buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self.low, self.high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = _HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self.high, self.low = high, low
        if self.protocol is not None and self.state == _OPEN:
            self._pause_protocol()
            self._resume_protocol()

    def pause_reading(self) -> None:
        if self.state == _OPEN and not self.read_paused:
            self.read_paused = True
            self._want_read(False)

    def resume_reading(self) -> None:
        if self.state == _OPEN and self.read_paused:
            self.read_paused = False
            self._want_read(True)
            tls = self.tls
            if tls is not None and tls.pending():
                self.loop.call_soon(self._on_readable)  # decrypted bytes epoll cannot see

    def is_reading(self) -> bool:
        return self.state == _OPEN and not self.read_paused

    def close(self) -> None:
        """Flush what is buffered, then close_notify and close (connection_lost soon)."""
        if self.state != _OPEN:
            if self.state < _OPEN:
                self._destroy(None)
            return
        self.state = _CLOSING
        if not self.buffer:
            self._shutdown()  # keeps the reader registered for the linger
        else:
            self._want_read(False)  # nothing is read while the buffer flushes

    def abort(self) -> None:
        self._destroy(None)

    def is_closing(self) -> bool:
        return self.state != _OPEN

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self.protocol is not None
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        tls = self.tls
        if name == "peername":
            return self.peer
        if name == "socket":
            return self.sock
        if name == "sockname":
            try:
                return self.sock.getsockname()
            except OSError:
                return default
        if tls is None or self.state == _CLOSED:
            return default
        if name == "ssl_object":
            return tls
        if name == "sslcontext":
            return tls.context
        if name == "peercert":
            return tls.getpeercert()
        if name == "cipher":
            return tls.cipher()
        if name == "compression":
            return tls.compression()
        return default

    def __repr__(self) -> str:
        names = ("peek", "handshake", "open", "closing", "linger", "closed")
        return f"<TlsTransport fd={self.fd} {names[self.state]} buffered={len(self.buffer)}>"
