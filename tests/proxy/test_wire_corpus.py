"""Request smuggling and desync shapes from public research, sent over raw sockets.

Every ambiguous message is refused with a 400 (or the limit's 413/431) before any byte of it
reaches a region, and the connection is closed (its framing is no longer known). Every
message the router does forward reaches the region as a clean re-serialisation: parsed
strictly by llhttp there, carrying the router's own headers, with exactly the body the
client framed. Sources of the shapes: RFC 9112 sections 6 and 7, James Kettle's "HTTP
Desync Attacks" (CL.TE, TE.CL, TE obfuscation), the llhttp and Node.js advisories on
chunk extensions and bare LF, and Envoy's and HAProxy's header-name rules.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from router.service import RouterService
from tests.backends import probe_passes, raw_exchange
from tests.conftest import StartRouter, make_config
from tests.proxy.test_proxy_errors import assert_router_error
from tests.wire import StrictRegion, exchange_raw, start_strict_region

H = b"Host: a\r\n"


@dataclass(frozen=True)
class Refused:
    """The router answers this status itself; nothing reaches the region."""

    status: int = 400
    code: str = "bad_request"


@dataclass(frozen=True)
class Forwarded:
    """These (method, target, body) reach the region, in order; ``then`` refuses the rest."""

    messages: tuple[tuple[bytes, bytes, bytes], ...]
    then: Refused | None = None


def post(body_headers: bytes, body: bytes, target: bytes = b"/") -> bytes:
    return b"POST " + target + b" HTTP/1.1\r\n" + H + body_headers + b"\r\n" + body


def get(headers: bytes = b"") -> bytes:
    """A GET of / with Host and then ``headers`` (each line with its CRLF)."""
    return b"GET / HTTP/1.1\r\n" + H + headers + b"\r\n"


CHUNKED = b"Transfer-Encoding: chunked\r\n"

BAD_REQUEST: dict[str, bytes] = {
    # -- CL.TE and TE.CL: both framings present ----------------------------------------
    "CL.TE": post(b"Content-Length: 6\r\n" + CHUNKED, b"0\r\n\r\nG"),
    "TE.CL": post(CHUNKED + b"Content-Length: 3\r\n", b"8\r\nSMUGGLED\r\n0\r\n\r\n"),
    "TE.CL, CL zero": post(CHUNKED + b"Content-Length: 0\r\n", b"0\r\n\r\n"),
    # -- Transfer-Encoding obfuscation -------------------------------------------------
    "TE xchunked": post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),
    "TE chunked, identity": post(b"Transfer-Encoding: chunked, identity\r\n", b"0\r\n\r\n"),
    "TE identity, chunked": post(b"Transfer-Encoding: identity, chunked\r\n", b"0\r\n\r\n"),
    "TE quoted": post(b'Transfer-Encoding: "chunked"\r\n', b"0\r\n\r\n"),
    "TE twice": post(CHUNKED + CHUNKED, b"0\r\n\r\n"),
    "TE chunked then another TE": post(CHUNKED + b"Transfer-Encoding: x\r\n", b"0\r\n\r\n"),
    "TE space before colon": post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),
    "TE vertical tab": post(b"Transfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n"),
    "TE form feed": post(b"Transfer-Encoding: \x0cchunked\r\n", b"0\r\n\r\n"),
    "TE as obs-fold continuation": post(b"X-A: b\r\n Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
    "TE folded value": post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"),
    "TE with underscore": post(
        b"Content-Length: 5\r\nTransfer_Encoding: chunked\r\n", b"0\r\n\r\n"
    ),
    "CL with underscore": post(
        b"Content_Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"
    ),
    "TE on HTTP/1.0": b"POST / HTTP/1.0\r\n" + H + CHUNKED + b"\r\n0\r\n\r\n",
    # -- Content-Length variants -------------------------------------------------------
    "CL duplicate, equal": post(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"),
    "CL duplicate, different": post(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd"),
    "CL list": post(b"Content-Length: 3, 3\r\n", b"abc"),
    "CL list, no space": post(b"Content-Length: 3,3\r\n", b"abc"),
    "CL plus sign": post(b"Content-Length: +3\r\n", b"abc"),
    "CL minus sign": post(b"Content-Length: -3\r\n", b"abc"),
    "CL hex": post(b"Content-Length: 0x3\r\n", b"abc"),
    "CL empty": post(b"Content-Length: \r\n", b""),
    "CL inner space": post(b"Content-Length: 1 2\r\n", b"abc"),
    "CL overflow": post(b"Content-Length: 18446744073709551616\r\n", b"abc"),
    # -- chunk framing -----------------------------------------------------------------
    "chunk size overflow": post(CHUNKED, b"1ffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
    "chunk size not hex": post(CHUNKED, b"zz\r\nabc\r\n0\r\n\r\n"),
    "chunk size with 0x": post(CHUNKED, b"0x3\r\nabc\r\n0\r\n\r\n"),
    "chunk size leading space": post(CHUNKED, b" 3\r\nabc\r\n0\r\n\r\n"),
    "chunk size bare LF": post(CHUNKED, b"3\nabc\r\n0\r\n\r\n"),
    "chunk data bare LF": post(CHUNKED, b"3\r\nabc\n0\r\n\r\n"),
    "chunk data too long": post(CHUNKED, b"3\r\nabcd\r\n0\r\n\r\n"),
    "last chunk bare LF": post(CHUNKED, b"3\r\nabc\r\n0\n\n"),
    "chunk size bare CR": post(CHUNKED, b"3\rabc\r\n0\r\n\r\n"),
    "chunk extension lone LF": post(CHUNKED, b"3;a=b\nabc\r\n0\r\n\r\n"),
    "chunk extension quoted LF": post(CHUNKED, b'3;a="b\nc"\r\nabc\r\n0\r\n\r\n'),
    "chunk extension quoted CRLF": post(CHUNKED, b'3;a="b\r\nc"\r\nabc\r\n0\r\n\r\n'),
    "chunk extension NUL": post(CHUNKED, b"3;a=\x00\r\nabc\r\n0\r\n\r\n"),
    "chunk extension unterminated quote": post(CHUNKED, b'3;a="bc\r\nabc\r\n0\r\n\r\n'),
    # -- request line --------------------------------------------------------------------
    "tab in the request line": b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n",
    "trailing space in the request line": b"GET / HTTP/1.1 \r\n" + H + b"\r\n",
    "bare CR in the target": b"GET /a\rb HTTP/1.1\r\n" + H + b"\r\n",
    "NUL in the target": b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n",
    "NUL in the method": b"GE\x00T / HTTP/1.1\r\n" + H + b"\r\n",
    "HTTP/0.9": b"GET /\r\n\r\n",
    "HTTP/1.2": b"GET / HTTP/1.2\r\n" + H + b"\r\n",
    "HTTP/2.0": b"GET / HTTP/2.0\r\n" + H + b"\r\n",
    "lower-case version": b"GET / http/1.1\r\n" + H + b"\r\n",
    "bare LF request line": b"GET / HTTP/1.1\n" + H + b"\r\n",
    # -- header fields -------------------------------------------------------------------
    "obs-fold": get(b"X-A: a\r\n  folded\r\n"),
    "fold on the first header": b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
    "bare LF between headers": b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
    "bare CR in a value": get(b"X-A: a\rb\r\n"),
    "NUL in a value": get(b"X-A: a\x00b\r\n"),
    "NUL in a name": get(b"X-\x00A: b\r\n"),
    "DEL in a value": get(b"X-A: a\x7fb\r\n"),
    "control char in a value": get(b"X-A: a\x01b\r\n"),
    "space in a name": get(b"X A: b\r\n"),
    "empty name": get(b": b\r\n"),
    "no colon": get(b"X-A b\r\n"),
    "non-token char in a name": get(b"X(A): b\r\n"),
    # -- Host ----------------------------------------------------------------------------
    "no Host": b"GET / HTTP/1.1\r\n\r\n",
    "two Hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "empty Host on HTTP/1.1": b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    "space in Host": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "slash in Host": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "userinfo in Host": b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    "comma in Host": b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n",
    "absolute form, other host": b"GET http://b/ HTTP/1.1\r\n" + H + b"\r\n",
}

REFUSED: dict[str, tuple[bytes, Refused]] = {
    **{name: (data, Refused()) for name, data in BAD_REQUEST.items()},
    "CL over max_body": (post(b"Content-Length: 65537\r\n", b""), Refused(413, "body_too_large")),
}

FORWARDED: dict[str, tuple[bytes, Forwarded]] = {
    "a request inside a Content-Length body": (
        post(b"Content-Length: 34\r\n", b"GET /inner HTTP/1.1\r\nHost: a\r\n\r\n\r\n", b"/outer"),
        Forwarded(((b"POST", b"/outer", b"GET /inner HTTP/1.1\r\nHost: a\r\n\r\n\r\n"),)),
    ),
    "a request inside a chunked body": (
        post(CHUNKED, b"20\r\nGET /inner HTTP/1.1\r\nHost: a\r\n\r\n\r\n0\r\n\r\n", b"/outer"),
        Forwarded(((b"POST", b"/outer", b"GET /inner HTTP/1.1\r\nHost: a\r\n\r\n"),)),
    ),
    "chunk extensions are dropped": (
        post(CHUNKED, b'3;a=b;c="d e"\r\nabc\r\n2;x\r\nde\r\n0;end\r\n\r\n'),
        Forwarded(((b"POST", b"/", b"abcde"),)),
    ),
    "upper-case chunk size and CHUNKED": (
        post(b"Transfer-Encoding: CHUNKED\r\n", b"A\r\n0123456789\r\n0\r\n\r\n"),
        Forwarded(((b"POST", b"/", b"0123456789"),)),
    ),
    "Content-Length with leading zeros": (
        post(b"Content-Length: 003\r\n", b"abc"),
        Forwarded(((b"POST", b"/", b"abc"),)),
    ),
    "pipelined requests": (
        post(b"Content-Length: 1\r\n", b"x", b"/1")
        + b"GET /2 HTTP/1.1\r\n"
        + H
        + b"\r\n"
        + post(CHUNKED, b"1\r\ny\r\n0\r\n\r\n", b"/3"),
        Forwarded(((b"POST", b"/1", b"x"), (b"GET", b"/2", b""), (b"POST", b"/3", b"y"))),
    ),
    "Content-Length shorter than the body: the rest is the next request": (
        post(b"Content-Length: 2\r\n", b"hello"),
        Forwarded(((b"POST", b"/", b"he"),), then=Refused()),
    ),
    "a good request, then a smuggling attempt": (
        b"GET /ok HTTP/1.1\r\n"
        + H
        + b"\r\n"
        + post(b"Content-Length: 4\r\n" + CHUNKED, b"0\r\n\r\n"),
        Forwarded(((b"GET", b"/ok", b""),), then=Refused()),
    ),
    "obs-text in a value": (
        b"GET /t HTTP/1.1\r\n" + H + b"X-A: caf\xe9\r\n\r\n",
        Forwarded(((b"GET", b"/t", b""),)),
    ),
    "Host with a port and an IPv6 literal": (
        b"GET /v6 HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        Forwarded(((b"GET", b"/v6", b""),)),
    ),
    "double spaces in the request line": (
        b"GET  /sp  HTTP/1.1\r\n" + H + b"\r\n",
        Forwarded(((b"GET", b"/sp", b""),)),
    ),
    "trailers are not read as request headers": (
        post(CHUNKED, b"3\r\nabc\r\n0\r\nHost: b\r\nX-Trailer: 1\r\n\r\n", b"/tr"),
        Forwarded(((b"POST", b"/tr", b"abc"),)),
    ),
    "leading empty lines before a request": (
        b"\r\n\r\nGET /after-crlf HTTP/1.1\r\n" + H + b"\r\n",
        Forwarded(((b"GET", b"/after-crlf", b""),)),
    ),
}


@pytest.fixture
async def behind_router(start_router: StartRouter) -> AsyncIterator[tuple[StrictRegion, int]]:
    async with start_strict_region() as region:
        config = make_config([{"id": "r1", "endpoint": region.url}], limits={"max_body": "64KiB"})
        service: RouterService = await start_router(config, probe=probe_passes)
        yield region, int(service.proxy_port)


async def assert_still_serving(region: StrictRegion, port: int) -> None:
    """A fresh connection gets a clean answer: no shape left the pool out of step."""
    before = len(region.messages)
    resp = await raw_exchange(port, b"GET /canary HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.status == 200
    assert resp.json()["target"] == "/canary"
    assert resp.json()["request_id"] == resp.header("X-Request-ID")
    assert len(region.messages) == before + 1
    assert region.errors == []


@pytest.mark.parametrize(("data", "expected"), REFUSED.values(), ids=list(REFUSED))
async def test_ambiguous_messages_are_refused_before_reaching_a_region(
    behind_router: tuple[StrictRegion, int], data: bytes, expected: Refused
) -> None:
    region, port = behind_router
    responses, closed = await exchange_raw(port, data)
    assert len(responses) == 1, [r.head for r in responses]
    assert_router_error(responses[0], expected.status, expected.code)
    assert responses[0].header("Connection") == "close"
    assert closed, "the connection must close after a refused message"
    assert region.bytes_received == 0
    await assert_still_serving(region, port)


@pytest.mark.parametrize(("data", "expected"), FORWARDED.values(), ids=list(FORWARDED))
async def test_forwarded_messages_are_clean_reserialisations(
    behind_router: tuple[StrictRegion, int], data: bytes, expected: Forwarded
) -> None:
    region, port = behind_router
    responses, closed = await exchange_raw(port, data)
    wanted = len(expected.messages) + (expected.then is not None)
    assert len(responses) == wanted, [r.head for r in responses]
    assert region.errors == []
    got = [(m.method, m.target, m.body) for m in region.messages]
    assert got == list(expected.messages)
    for msg, resp in zip(region.messages, responses, strict=False):
        assert region.router_made(msg)
        assert resp.status == 200
        assert resp.json()["request_id"] == resp.header("X-Request-ID")
        assert msg.header_all(b"transfer-encoding") in ([], [b"chunked"])
        assert len(msg.header_all(b"content-length")) <= 1
    if expected.then is not None:
        assert_router_error(responses[-1], expected.then.status, expected.then.code)
        assert closed
    await assert_still_serving(region, port)


async def test_chunked_body_over_the_limit_is_cut_off_upstream_and_refused(
    behind_router: tuple[StrictRegion, int],
) -> None:
    """A streamed body passes the limit after some of it was forwarded: the client gets 413
    and the region's request is cut off (never a complete message), not silently ended."""
    region, port = behind_router
    data = post(CHUNKED, b"10001\r\n" + b"x" * 0x10001 + b"\r\n0\r\n\r\n")
    responses, closed = await exchange_raw(port, data)
    assert len(responses) == 1
    assert_router_error(responses[0], 413, "body_too_large")
    assert closed
    assert region.messages == []
    assert region.errors == []
    await assert_still_serving(region, port)
