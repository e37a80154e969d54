"""``tls.redirect_http``: the plain listener answers every request with a 308 to https.

308 (not 301) so that clients repeat the method and body. The Location keeps the Host's
name, the path and the query byte for byte, with the https port (omitted when it is 443).
Nothing reaches a region. The connection closes after each answer: a redirected client
reconnects over TLS anyway.
"""

from __future__ import annotations

import asyncio

import httptools

from router.errors import BadRequest, ProxyError
from router.proxy.headers import error_response, valid_host
from router.proxy.paths import split_target


def redirect_location(host: bytes, target: bytes, https_port: int) -> bytes:
    """``https://name[:port]/path?query`` for a request's Host and raw target."""
    if host.startswith(b"["):
        name = host[: host.find(b"]") + 1]
    else:
        name = host.rsplit(b":", 1)[0] if b":" in host else host
    port = b"" if https_port == 443 else b":%d" % https_port
    return b"https://%b%b%b" % (name.lower(), port, target)


class RedirectConnection(asyncio.Protocol):
    """One plain connection when ``redirect_http`` is on: parse a head, answer 308, close."""

    def __init__(self, https_port: int, max_header_bytes: int, idle_timeout_s: float) -> None:
        self.https_port = https_port
        self.max_header_bytes = max_header_bytes
        self.idle_timeout_s = idle_timeout_s
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.host: bytes | None = None
        self.seen = 0
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport
        # A client that never finishes its head must not hold the socket forever.
        self._timer = asyncio.get_running_loop().call_later(self.idle_timeout_s, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.seen += len(data)
        try:
            if self.seen > self.max_header_bytes:
                raise BadRequest("request head too large")
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the head is complete; on_headers_complete answered
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            error = cause if isinstance(cause, ProxyError) else _bad(exc)
            self._answer(error_response(error, None, close=True))
        except httptools.HttpParserError as exc:
            self._answer(error_response(_bad(exc), None, close=True))

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"host":
            if self.host is not None:
                raise BadRequest("more than one Host header")
            self.host = value

    def on_headers_complete(self) -> None:
        target, authority = split_target(self.url)
        host = self.host if self.host is not None else authority
        if not host or not valid_host(host):
            raise BadRequest("missing or invalid Host header")
        location = redirect_location(host, target, self.https_port)
        self._answer(
            b"HTTP/1.1 308 Permanent Redirect\r\nLocation: %b\r\nContent-Length: 0\r\n"
            b"Connection: close\r\n\r\n" % location
        )

    def _answer(self, response: bytes) -> None:
        if self.done or self.transport is None:
            return
        self.done = True
        self.transport.write(response)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.done = True
        if self._timer is not None:
            self._timer.cancel()

    def __repr__(self) -> str:
        return f"<RedirectConnection https_port={self.https_port} done={self.done}>"


def _bad(exc: Exception) -> ProxyError:
    return BadRequest(f"malformed request: {exc}")
