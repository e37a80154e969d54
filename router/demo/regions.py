"""The demo's world around the router: simulated regions on loopback and the client traffic.

Each ``DemoRegion`` is a small aiohttp server with a simulated latency (with jitter) and an
optional share of 503 answers; it can be taken down (its listener closes, so connections are
refused) and brought back on the same port. ``TrafficGenerator`` sends a steady, bounded
stream of GETs through the proxy and keeps what the clients saw. The address helpers decide
where each of them listens and connects.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from collections import deque
from dataclasses import dataclass

import aiohttp
from aiohttp import web

# A request path the demo sends traffic to; none of them matches the demo config's routes.
PATHS: tuple[str, ...] = (
    "/api/orders/{n}",
    "/api/catalog?page={n}",
    "/api/users/{n}/profile",
    "/static/app.js?v={n}",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """How a demo region behaves when it is up."""

    latency_s: float
    jitter: float = 0.25  # +/- this fraction of latency_s, uniformly
    error_rate: float = 0.0  # share of requests answered 503 (not /health)

    def describe(self) -> str:
        text = f"{self.latency_s * 1000:.0f} ms"
        if self.error_rate:
            text += f", {self.error_rate:.0%} 503s"
        return text


# Assigned to the configured regions in order (cycled when there are more).
PROFILES: tuple[Profile, ...] = (
    Profile(latency_s=0.020),
    Profile(latency_s=0.060),
    Profile(latency_s=0.120, error_rate=0.02),
)


class DemoRegion:
    """One simulated region: ``start``, ``go_down``, ``come_back``, ``stop``."""

    def __init__(
        self, region_id: str, profile: Profile, host: str, port: int, rng: random.Random
    ) -> None:
        self.region_id = region_id
        self.profile = profile
        self.host = host
        self.port = port  # 0 until start() binds a free one
        self.rng = rng
        self.up = False
        self.served = 0
        self._runner: web.AppRunner | None = None
        self._hold: socket.socket | None = None  # keeps the port while down

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return f"<DemoRegion {self.region_id} {self.host}:{self.port} {state} served={self.served}>"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "region": self.region_id})

    async def _handle(self, request: web.Request) -> web.Response:
        p = self.profile
        delay = p.latency_s * (1.0 + self.rng.uniform(-p.jitter, p.jitter))
        await asyncio.sleep(delay)
        self.served += 1
        if p.error_rate and self.rng.random() < p.error_rate:
            return web.json_response(
                {"region": self.region_id, "error": "simulated failure"}, status=503
            )
        return web.json_response(
            {"region": self.region_id, "path": request.path_qs, "latency_ms": delay * 1000}
        )

    async def start(self) -> None:
        """Listen on host:port (port 0: any free port, remembered for ``come_back``)."""
        if self._hold is not None:
            self._hold.close()
            self._hold = None
        runner = web.AppRunner(
            self._app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        if self.port == 0:
            self.port = int(runner.addresses[0][1])
        self._runner = runner
        self.up = True

    async def go_down(self) -> None:
        """Stop answering: close the listener and every connection, so new ones are refused.

        The port stays bound (a socket that never listens), so nothing else takes it
        before ``come_back``.
        """
        await self.stop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        hold = socket.socket(family, socket.SOCK_STREAM)
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            hold.bind((self.host, self.port))
        except OSError:
            hold.close()
        else:
            self._hold = hold

    async def come_back(self) -> None:
        await self.start()

    async def stop(self) -> None:
        self.up = False
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._hold is not None:
            self._hold.close()
            self._hold = None


def bindable(host: str, port: int) -> bool:
    """Whether a listener could bind host:port right now (port 0 always can)."""
    if port == 0:
        return True
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def url_host(host: str) -> str:
    """The host a local client uses to reach a listener bound to ``host``."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def region_bind_host(host: str) -> str:
    """A demo region listens on the endpoint's loopback address, else on 127.0.0.1."""
    try:
        return host if ipaddress.ip_address(host).is_loopback else "127.0.0.1"
    except ValueError:  # a name, even "localhost", may resolve to several addresses
        return "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # loop time when the answer (or error) arrived
    region: str  # X-Router-Region, "-" when there was none
    ok: bool  # a 2xx reached the client
    latency_s: float


class TrafficGenerator:
    """A steady stream of GETs through the proxy at ``rate_per_s``, at most ``concurrency``
    in flight; when the proxy is slower than that, the rate drops instead of queueing."""

    def __init__(
        self,
        base_url: str,
        *,
        rate_per_s: float = 75.0,
        concurrency: int = 32,
        window_s: float = 5.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.base_url = base_url
        self.rate_per_s = rate_per_s
        self.concurrency = concurrency
        self.window_s = window_s
        self.timeout_s = timeout_s
        self.sent = 0
        self.ok = 0
        self.failed = 0
        self.failures: dict[str, int] = {}  # "503" / "ClientConnectorError" -> count
        self.recent: deque[Sample] = deque()
        self._inflight: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return (
            f"<TrafficGenerator {self.base_url} sent={self.sent} ok={self.ok} "
            f"failed={self.failed} inflight={len(self._inflight)}>"
        )

    def window(self, now: float) -> list[Sample]:
        """The samples of the last ``window_s`` seconds."""
        horizon = now - self.window_s
        while self.recent and self.recent[0].at < horizon:
            self.recent.popleft()
        return list(self.recent)

    async def run(self) -> None:
        """Send until cancelled; then wait briefly for the requests in flight and close."""
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.concurrency)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
        )
        interval = 1.0 / self.rate_per_s
        next_at = loop.time()
        try:
            while True:
                await slots.acquire()
                next_at = max(next_at + interval, loop.time() - interval)
                path = PATHS[self.sent % len(PATHS)].format(n=self.sent % 1000)
                self.sent += 1
                task = loop.create_task(self._one(path, slots))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
                await asyncio.sleep(max(0.0, next_at - loop.time()))
        finally:
            await self._finish()

    async def _finish(self) -> None:
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=2.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                self.failed += len(pending)
                self.failures["unanswered at the end"] = len(pending)
        if self._session is not None:
            await self._session.close()

    async def _one(self, path: str, slots: asyncio.Semaphore) -> None:
        assert self._session is not None
        started = time.monotonic()
        region, status, ok = "-", "", False
        try:
            async with self._session.get(self.base_url + path) as resp:
                await resp.read()
                region = resp.headers.get("X-Router-Region", "-")
                status = str(resp.status)
                ok = 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, ok = type(exc).__name__, False
        finally:
            slots.release()
        loop = asyncio.get_running_loop()
        self.recent.append(Sample(loop.time(), region, ok, time.monotonic() - started))
        if ok:
            self.ok += 1
        else:
            self.failed += 1
            self.failures[status] = self.failures.get(status, 0) + 1


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel a background task, wait for its cleanup, and re-raise what it failed with.

    ``asyncio.wait`` (unlike ``await task``) leaves the caller's own cancellation alone.
    """
    if task is None:
        return
    task.cancel()
    await asyncio.wait([task])
    error = None if task.cancelled() else task.exception()
    if error is not None:
        raise error
