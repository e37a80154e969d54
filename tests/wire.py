"""A strict recording region and a raw client, for request-framing (desync) tests.

``StrictRegion`` parses every byte the router sends it with llhttp (httptools, strict) and
records each message, or the parse error that ended a connection, so a test can tell a
clean re-serialisation from smuggled or misframed bytes. Each message is answered with a
JSON echo (``method``, ``target``, ``body``, ``request_id``) on a keep-alive connection.

``exchange_raw`` sends raw bytes on one client connection and collects every response
until the router closes it or goes quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httptools
import orjson

from tests.backends import RawResponse, read_response


@dataclass(slots=True)
class Message:
    """One request as the region parsed it."""

    method: bytes = b""
    target: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False

    def header_all(self, name: bytes) -> list[bytes]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]


class _RegionConnection(asyncio.Protocol):
    def __init__(self, region: StrictRegion) -> None:
        self.region = region
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.message: Message | None = None
        self.since_boundary = bytearray()  # bytes fed since the last message ended
        self.collecting: bytearray | None = None  # a custom method, up to its space
        self.custom_method: bytes | None = None  # the one the message being parsed has

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.region.connections += 1

    def data_received(self, data: bytes) -> None:
        # One byte at a time, so a message's first byte is known: llhttp knows a fixed set
        # of methods, and a custom one (which the router forwards) is read as the router
        # reads it, with GET in its place while parsing.
        self.region.bytes_received += len(data)
        for i in range(len(data)):
            if self.collecting is not None:
                if data[i] != 0x20:
                    self.collecting += data[i : i + 1]
                    continue
                self.custom_method, self.collecting = bytes(self.collecting), None
                self.parser = httptools.HttpRequestParser(self)
                self._feed(b"GET ")
            else:
                self._feed(data[i : i + 1])
            if self.transport is None or self.transport.is_closing():
                return

    def _feed(self, data: bytes) -> None:
        self.since_boundary += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._close()  # answered as an ordinary request (no 101): the tunnel ends here
        except httptools.HttpParserInvalidMethodError:
            token = bytes(self.since_boundary).lstrip(b"\r\n")
            if self.custom_method is not None or b" " in token[:-1]:
                self._error("HttpParserInvalidMethodError")
            elif token.endswith(b" "):  # a prefix of a known method ("POS ")
                self.custom_method = token[:-1]
                self.parser = httptools.HttpRequestParser(self)
                self._feed(b"GET ")
            else:
                self.collecting = bytearray(token)
        except httptools.HttpParserError as exc:
            self._error(f"{type(exc).__name__}: {exc}")

    def _error(self, what: str) -> None:
        self.region.errors.append(what)
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def on_message_begin(self) -> None:
        self.message = Message()

    def on_url(self, url: bytes) -> None:
        assert self.message is not None
        self.message.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.message is not None
        self.message.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.message is not None
        self.message.method = self.parser.get_method()
        if self.custom_method is not None:
            self.message.method, self.custom_method = self.custom_method, None

    def on_body(self, body: bytes) -> None:
        assert self.message is not None
        self.message.body += body

    def on_message_complete(self) -> None:
        msg = self.message
        assert msg is not None
        msg.complete = True
        self.since_boundary.clear()
        self.region.messages.append(msg)
        ids = msg.header_all(b"x-request-id")
        body = orjson.dumps(
            {
                "method": msg.method.decode("latin-1"),
                "target": msg.target.decode("latin-1"),
                "body": msg.body.decode("latin-1"),
                "request_id": ids[0].decode("latin-1") if len(ids) == 1 else None,
            }
        )
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
            )


@dataclass(eq=False)
class StrictRegion:
    """What reached the region: parsed messages, parse errors, bytes, connections."""

    server: asyncio.Server | None = None
    messages: list[Message] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    bytes_received: int = 0
    connections: int = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def router_made(self, msg: Message) -> bool:
        """True when ``msg`` carries exactly the one set of headers the router adds: a
        message without them was never a request the router forwarded (smuggled)."""
        return (
            len(msg.header_all(b"x-request-id")) == 1
            and len(msg.header_all(b"x-forwarded-host")) == 1
            and len(msg.header_all(b"x-forwarded-proto")) == 1
        )


@contextlib.asynccontextmanager
async def start_strict_region() -> AsyncIterator[StrictRegion]:
    region = StrictRegion()
    loop = asyncio.get_running_loop()
    region.server = await loop.create_server(lambda: _RegionConnection(region), "127.0.0.1", 0)
    try:
        yield region
    finally:
        region.server.close()


async def exchange_raw(
    port: int, data: bytes, *, quiet_s: float = 0.5
) -> tuple[list[RawResponse], bool]:
    """Send ``data`` on a new connection; return the responses read and whether the router
    closed the connection (rather than waiting, silent, for more bytes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    responses: list[RawResponse] = []
    try:
        writer.write(data)
        while True:
            try:
                responses.append(await read_response(reader, timeout_s=quiet_s))
            except TimeoutError:
                return responses, False
            except (asyncio.IncompleteReadError, ConnectionError):
                return responses, True
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
