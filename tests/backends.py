"""Test regions: aiohttp apps that record and echo what reached them, plus raw-socket helpers.

Start a region in a test with pytest-aiohttp's ``aiohttp_server``::

    region = await start_region(aiohttp_server, "r1")
    config = make_config([region.config()])

Routes of a region (any method unless noted):

``/health``
    200 ``ok``; 503 while ``region.healthy`` is False; hangs while ``region.health_hangs``.
anything else
    JSON echo of what arrived (see ``Seen``): method, raw path, version, headers in order,
    body length and sha256. The body is read streaming, so uploads of any size are fine.
    Knobs for failure tests: ``region.fail_status = 503`` answers that status instead (body
    read first), ``region.reset_requests = True`` aborts the connection instead.
``/delay/{seconds}``
    sleeps, then echoes; a cancelled handler (client or proxy went away) is recorded in
    ``region.cancelled`` (an ``asyncio.Event``).
``/bytes/{n}``
    ``n`` bytes of ``pattern`` with Content-Length (``?chunked=1``: chunked), generated on
    the fly; compare with ``pattern_sha256(n)``. A download cut off sets ``region.cancelled``.
``/sse/{n}``
    ``n`` server-sent events ``data: <i>``; each one waits for ``region.sse_gate.release()``,
    so a test can prove event 1 arrived before event 2 was sent.
``/gzip``
    ``GZIP_BODY`` with ``Content-Encoding: gzip`` (the proxy must not decode it).
``/status/{code}``
    an empty response with that status (204, 304, 500, ...).
``/hop``
    a 200 carrying hop-by-hop response headers (``HOP_RESPONSE_HEADERS``) plus ``X-Kept``.
``/reset``
    aborts the connection without answering.
``/ws``
    WebSocket echo: text and binary frames come back unchanged; a text frame
    ``close <code> <reason>`` makes the region close with that code and reason; the close
    code and reason a client sends are recorded in ``region.ws_closes``.

Every request (except ``/health``) is appended to ``region.seen``; ``region.peer_ports``
holds the source port of every connection that carried a request, so ``len()`` of it
counts the region's connections.

``start_raw_region(handler)`` serves a plain asyncio stream handler, for responses aiohttp
will not produce (close-delimited bodies, malformed framing). ``raw_connection``,
``raw_exchange`` and ``read_response`` speak HTTP/1.1 over a raw socket for malformed-input
tests.

``probe_passes`` / ``probe_never_answers`` replace the health prober
(``start_router(config, probe=...)``) to pin region eligibility.

``router_process(tmp_path, config)`` runs the real CLI (``python -m router run``) on free
ports and stops it on exit; ``run_cli(...)`` runs any other subcommand to completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiohttp import WSMsgType, web
from pytest_aiohttp import AiohttpServer

from router.config.model import HealthCheckConfig, RegionConfig
from router.health.checker import ProbeResult

PATTERN_BLOCK = bytes(range(256)) * 257  # 64 KiB + 256: any offset has a full block
GZIP_BODY = gzip.compress(b"hello compressed world " * 100, mtime=0)
HOP_RESPONSE_HEADERS = {
    "Connection": "X-Hop-Named, keep-alive",
    "X-Hop-Named": "secret",
    "Keep-Alive": "timeout=5",
    "Proxy-Authenticate": "Basic",
    "Trailer": "X-Checksum",
    "Upgrade": "h2c",
    "Proxy-Connection": "keep-alive",
}


def pattern(n: int, block: int = 65536) -> Iterator[bytes]:
    """The deterministic test payload (byte i is i % 256): ``n`` bytes in blocks of ``block``."""
    block = min(block, 65536)
    sent = 0
    while sent < n:
        size = min(block, n - sent)
        start = sent % 256
        yield PATTERN_BLOCK[start : start + size]
        sent += size


async def apattern(n: int, block: int = 65536) -> AsyncIterator[bytes]:
    """``pattern`` as an async iterator (an aiohttp client streams it as the request body)."""
    for chunk in pattern(n, block):
        yield chunk


def pattern_sha256(n: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern(n):
        digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Seen:
    """What one request looked like when it reached the region."""

    method: str
    raw_path: str
    version: str
    headers: list[tuple[str, str]]
    body_length: int
    body_sha256: str
    peer_port: int

    def header(self, name: str) -> str | None:
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "raw_path": self.raw_path,
            "version": self.version,
            "headers": self.headers,
            "body_length": self.body_length,
            "body_sha256": self.body_sha256,
            "peer_port": self.peer_port,
        }


@dataclass(eq=False)
class Region:
    """A running test region and what it has seen."""

    name: str
    server: Any = None  # aiohttp TestServer
    healthy: bool = True
    health_hangs: bool = False
    fail_status: int | None = None  # the echo route answers this status instead
    reset_requests: bool = False  # the echo route aborts the connection instead
    seen: list[Seen] = field(default_factory=list)
    peer_ports: set[int] = field(default_factory=set)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set on every request
    sse_gate: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(0))
    ws_closes: list[tuple[int | None, str]] = field(default_factory=list)
    ws_closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def port(self) -> int:
        return int(self.server.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self, **extra: Any) -> dict[str, Any]:
        """The region's entry for ``make_config([...])``."""
        return {"id": self.name, "endpoint": self.url, **extra}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 40)
        r = app.router
        r.add_get("/health", self._health)
        r.add_route("*", "/delay/{seconds}", self._delay)
        r.add_route("*", "/bytes/{n}", self._bytes)
        r.add_get("/sse/{n}", self._sse)
        r.add_route("*", "/gzip", self._gzip)
        r.add_route("*", "/status/{code}", self._status)
        r.add_route("*", "/hop", self._hop)
        r.add_route("*", "/reset", self._reset)
        r.add_get("/ws", self._ws)
        r.add_route("*", "/{tail:.*}", self._echo)
        return app

    async def _record(self, request: web.Request) -> Seen:
        digest = hashlib.sha256()
        length = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            length += len(chunk)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        port = int(peer[1]) if peer else 0
        seen = Seen(
            method=request.method,
            raw_path=request.raw_path,
            version=f"{request.version.major}.{request.version.minor}",
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body_length=length,
            body_sha256=digest.hexdigest(),
            peer_port=port,
        )
        self.seen.append(seen)
        self.peer_ports.add(port)
        self.arrived.set()
        return seen

    async def _health(self, request: web.Request) -> web.Response:
        if self.health_hangs:
            await asyncio.Event().wait()
        return web.Response(text="ok", status=200 if self.healthy else 503)

    async def _echo(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        if self.reset_requests:
            return await self._reset(request, recorded=True)
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, text=f"{self.name} fails")
        return web.Response(
            body=orjson.dumps(seen.as_json()),
            content_type="application/json",
            headers={"X-Region": self.name},
        )

    async def _delay(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        try:
            await asyncio.sleep(float(request.match_info["seconds"]))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return web.Response(body=orjson.dumps(seen.as_json()), content_type="application/json")

    async def _bytes(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        n = int(request.match_info["n"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if request.query.get("chunked"):
            resp.enable_chunked_encoding()
        else:
            resp.content_length = n
        await resp.prepare(request)
        try:
            if request.method != "HEAD":  # aiohttp would send a StreamResponse body even then
                for chunk in pattern(n):
                    await resp.write(chunk)
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            self.cancelled.set()
            raise
        return resp

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        for i in range(int(request.match_info["n"])):
            await self.sse_gate.acquire()
            await resp.write(b"data: %d\n\n" % i)
        await resp.write_eof()
        return resp

    async def _gzip(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(
            body=GZIP_BODY, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        )

    async def _status(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(status=int(request.match_info["code"]))

    async def _hop(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.Response(text="hop", headers={**HOP_RESPONSE_HEADERS, "X-Kept": "yes"})

    async def _reset(self, request: web.Request, *, recorded: bool = False) -> web.Response:
        if not recorded:
            await self._record(request)
        assert request.transport is not None
        request.transport.abort()
        await asyncio.Event().wait()  # cancelled as the connection goes
        raise AssertionError("unreachable")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        await self._record(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                if msg.data.startswith("close "):
                    _, code, reason = msg.data.split(" ", 2)
                    await ws.close(code=int(code), message=reason.encode())
                    break
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                self.ws_closes.append((msg.data, msg.extra or ""))
                await ws.close()
                break
            else:
                break
        self.ws_closed.set()
        return ws


async def start_region(aiohttp_server: AiohttpServer, name: str = "r1") -> Region:
    """Start a recording region on an ephemeral loopback port."""
    region = Region(name)
    region.server = await aiohttp_server(region.app())
    return region


async def probe_passes(region: RegionConfig, hc: HealthCheckConfig) -> ProbeResult:
    """A health probe (``start_router(..., probe=probe_passes)``) that finds every region up,
    so a region that refuses connections stays eligible and the proxy path meets it."""
    return ProbeResult(ok=True, latency_s=0.001)


async def probe_never_answers(region: RegionConfig, hc: HealthCheckConfig) -> ProbeResult:
    """A health probe that never completes: regions stay ``unknown`` (never eligible)."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(eq=False)
class RawRegion:
    """A plain asyncio server running a scripted handler per connection."""

    server: asyncio.Server
    connections: int = 0

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def start_raw_region(handler: StreamHandler) -> AsyncIterator[RawRegion]:
    """Serve ``handler`` on loopback; the handler's writer is closed after it returns."""
    holder: list[RawRegion] = []

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        holder[0].connections += 1
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    holder.append(RawRegion(server))
    try:
        yield holder[0]
    finally:
        server.close()
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    """Read an HTTP head up to and including the blank line."""
    return await reader.readuntil(b"\r\n\r\n")


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    head: bytes
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def json(self) -> Any:
        return orjson.loads(self.body)


async def read_response(
    reader: asyncio.StreamReader, *, head_request: bool = False, timeout_s: float = 10.0
) -> RawResponse:
    """Read one response from a raw socket, honouring Content-Length or chunked framing.

    With neither (close-delimited), reads to EOF.
    """
    async with asyncio.timeout(timeout_s):
        head = await read_head(reader)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers.append((k.strip(), v.strip()))
        names = {k.lower(): v for k, v in headers}
        if head_request or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "content-length" in names:
            body = await reader.readexactly(int(names["content-length"]))
        elif names.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        else:
            body = await reader.read()
        return RawResponse(status, head, headers, body)


@contextlib.asynccontextmanager
async def raw_connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw TCP connection to the proxy, closed on exit."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def closed_by_peer(reader: asyncio.StreamReader, timeout_s: float = 5.0) -> bool:
    """True when the peer closes (EOF or reset) within ``timeout_s`` without sending more."""
    try:
        async with asyncio.timeout(timeout_s):
            return await reader.read(1) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def raw_exchange(port: int, data: bytes, *, timeout_s: float = 10.0) -> RawResponse:
    """Send raw bytes to ``port`` on a new connection and read the first response."""
    async with raw_connection(port) as (reader, writer):
        writer.write(data)
        await writer.drain()
        return await read_response(reader, timeout_s=timeout_s)


def free_port() -> int:
    """A TCP port free on loopback right now (for subprocesses that need fixed ports)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports free right now (all held until all are picked)."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


# -- the real CLI in a subprocess -------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    """The environment for ``python -m router`` from this checkout (installed or not)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("ROUTER_CONFIG", None)
    return env


async def run_cli(*args: str, cwd: Path, timeout_s: float = 30.0) -> tuple[int, str, str]:
    """Run ``python -m router ARGS`` to completion; return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "router",
        *args,
        cwd=cwd,
        env=cli_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout_s):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass(eq=False)
class RouterProcess:
    """``python -m router run`` in a subprocess, with its ports and log file."""

    process: asyncio.subprocess.Process
    proxy_port: int
    admin_port: int
    log_path: Path
    instance_id: str  # what its /readyz names: another process on the admin port is not it

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def children(self) -> list[int]:
        """PIDs of the process's children (the workers, with ``--workers``)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Poll admin ``/readyz`` until this process answers 200; fail early if it exits.

        A 200 that names another instance (a process that holds this admin port while
        this one failed to bind it) is not readiness: the poll goes on until this process
        exits or the deadline passes."""
        url = f"http://127.0.0.1:{self.admin_port}/readyz"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        body: dict[str, Any] = {}
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"router exited {self.process.returncode}:\n{self.log()}")
                with contextlib.suppress(aiohttp.ClientError, ValueError):
                    async with session.get(url) as resp:
                        body = await resp.json(content_type=None)
                        if resp.status == 200 and body.get("instance") == self.instance_id:
                            return
                if loop.time() > deadline:
                    answered = f" (/readyz answered for {body.get('instance')!r})" if body else ""
                    raise AssertionError(
                        f"router {self.instance_id!r} not ready in {timeout_s}s{answered}:\n"
                        f"{self.log()}"
                    )
                await asyncio.sleep(0.05)

    async def wait_exit(self, timeout_s: float = 30.0) -> int:
        async with asyncio.timeout(timeout_s):
            return await self.process.wait()


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def router_process(
    tmp_path: Path, config: dict[str, Any], *, ready: bool = True, workers: int = 0
) -> AsyncIterator[RouterProcess]:
    """Run the real CLI on ``config`` (a mapping as in config.yaml; ``listen`` is filled in
    with free ports unless given), with ``--workers N`` when ``workers`` is set. Stopped
    with SIGTERM (then SIGKILL) on exit."""
    config = dict(config)
    if "listen" not in config:
        proxy, admin = free_ports(2)
        config["listen"] = {"proxy": f"127.0.0.1:{proxy}", "admin": f"127.0.0.1:{admin}"}
    config.setdefault("state_dir", str(tmp_path / "state"))
    config.setdefault("reload", {"watch": False})
    config.setdefault("access_log", False)
    cfg_path = write_config(tmp_path / "config.yaml", config)
    log_path = tmp_path / "router.log"
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "router",
            "run",
            "-c",
            str(cfg_path),
            *(["--workers", str(workers)] if workers else []),
            cwd=tmp_path,
            env=cli_env(),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    proxy_port = int(config["listen"]["proxy"].rsplit(":", 1)[1])
    router = RouterProcess(
        proc,
        proxy_port,
        int(config["listen"]["admin"].rsplit(":", 1)[1]),
        log_path,
        config.get("instance_id") or f"{socket.gethostname()}:{proxy_port}",
    )
    try:
        if ready:
            await router.wait_ready()
        yield router
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await router.wait_exit(10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def region_behind_router(
    aiohttp_server: AiohttpServer, start_router: Any, **sections: object
) -> tuple[Region, int]:
    """One recording region behind an in-process router; returns it and the proxy port."""
    from tests.conftest import make_config  # conftest imports nothing from here

    region = await start_region(aiohttp_server)
    service = await start_router(make_config([region.config()], **sections))
    return region, int(service.proxy_port)
