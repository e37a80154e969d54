"""A seeded mutation fuzzer for request framing: the router never desyncs, never crashes.

Valid requests are mutated (bytes flipped to framing characters, framing headers and whole
requests spliced in, lines duplicated, spans deleted, numbers changed) and sent over raw
sockets, many connections at a time, through the router to a strict region. Whatever the
router accepts or refuses, these must hold:

- the region parses every byte it gets (no misframed or smuggled bytes);
- every message the region sees was made by the router (its headers, once), exactly once;
- every answer a client gets from the region is the answer to its own request;
- the router's own errors are well-formed, the event loop logs no unhandled error, and
  once the clients are gone no request is left counted in flight.

The seed is fixed so a failure reproduces; ``ROUTER_FUZZ_SEED`` and ``ROUTER_FUZZ_CASES``
explore further. Bounded to well under a minute.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import orjson

from router.service import RouterService
from tests.backends import RawResponse, probe_passes
from tests.cluster import eventually
from tests.conftest import StartRouter, make_config
from tests.proxy.test_wire_corpus import assert_still_serving
from tests.wire import StrictRegion, exchange_raw, start_strict_region

SEED = int(os.environ.get("ROUTER_FUZZ_SEED", "20261202"))
CASES = int(os.environ.get("ROUTER_FUZZ_CASES", "400"))
CONCURRENCY = 16

SEEDS = [
    b"GET /a?q=1 HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\r\n",
    b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;x=y\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n",
    b"PUT /d HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nIdempotency-Key: k\r\n\r\nxyz"
    b"GET /e HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /f HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
    b"Content-Length: 4\r\n\r\nbody",
    b"BREW /g HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
    b"GET /h HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"DELETE /i HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz",
]

BYTES = [b"\r", b"\n", b"\x00", b" ", b"\t", b":", b",", b";", b"0", b"9", b"f", b"-", b"_"]
BYTES += [b'"', b"\x7f", b"\xff", b"\x0b", b"a"]
INSERTS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Host: b\r\n",
    b" chunked\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(len(buf) + 1)
        op = rng.randrange(6)
        if op == 0 and buf:  # flip a byte to a framing-relevant one
            buf[min(pos, len(buf) - 1)] = rng.choice(BYTES)[0]
        elif op == 1:  # insert a token, header or request
            buf[pos:pos] = rng.choice(INSERTS)
        elif op == 2 and buf:  # delete a span
            buf[pos : pos + rng.randint(1, 8)] = b""
        elif op == 3:  # duplicate a line
            lines = bytes(buf).split(b"\r\n")
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            buf = bytearray(b"\r\n".join(lines))
        elif op == 4:  # change a number (lengths, chunk sizes)
            digits = [i for i, c in enumerate(buf) if 0x30 <= c <= 0x39]
            if digits:
                i = rng.choice(digits)
                buf[i : i + 1] = str(rng.choice([0, 1, 4, 6, 10, 99, 65536])).encode()
        else:  # splice another seed in
            buf[pos:pos] = rng.choice(SEEDS)
    return bytes(buf)


def check_responses(responses: list[RawResponse], case: bytes) -> list[str]:
    """Each answer from the region belongs to this connection's own request; each router
    error is well-formed."""
    problems = []
    for resp in responses:
        if resp.header("X-Router-Error") is not None:
            error: Any = orjson.loads(resp.body)["error"] if resp.body else None
            if not error or error.get("code") != resp.header("X-Router-Error"):
                problems.append(f"malformed router error for {case!r}: {resp.head!r}")
        elif (
            resp.status == 200
            and resp.body
            and (resp.json()["request_id"] != resp.header("X-Request-ID"))
        ):
            problems.append(f"answer of another request for {case!r}: {resp.body!r}")
    return problems


async def test_mutated_requests_never_desync_or_crash_the_router(
    start_router: StartRouter,
) -> None:
    loop = asyncio.get_running_loop()
    loop_errors: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(str(ctx.get("message"))))
    rng = random.Random(SEED)
    cases = [mutate(rng, rng.choice(SEEDS)) for _ in range(CASES)]
    async with start_strict_region() as region:
        config = make_config([{"id": "r1", "endpoint": region.url}], limits={"max_body": "64KiB"})
        service: RouterService = await start_router(config, probe=probe_passes)
        port = int(service.proxy_port)
        limit = asyncio.Semaphore(CONCURRENCY)
        problems: list[str] = []

        async def one(case: bytes) -> None:
            async with limit:
                responses, _ = await exchange_raw(port, case, quiet_s=0.3)
                problems.extend(check_responses(responses, case))

        async with asyncio.timeout(50):
            for start in range(0, len(cases), 100):
                await asyncio.gather(*(one(c) for c in cases[start : start + 100]))
                await assert_still_serving(region, port)
        assert problems == []
        assert_region_saw_only_router_requests(region)
        core = service.runtime.core

        async def drained() -> bool:
            return not (core.inflight or core.awaiting)

        await eventually(drained, 5, "the proxy core drains its in-flight requests")
    assert loop_errors == []


def assert_region_saw_only_router_requests(region: StrictRegion) -> None:
    assert region.errors == []
    smuggled = [m for m in region.messages if not region.router_made(m)]
    assert smuggled == []
    ids = [m.header_all(b"x-request-id")[0] for m in region.messages]
    assert len(ids) == len(set(ids)), "a request reached the region twice"
