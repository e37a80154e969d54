"""The proxy's per-request Python cost, without sockets: `python bench/hotpath.py [N] [--profile]`.

One ClientConnection and one pooled UpstreamConnection on fake transports; each iteration
feeds a 4-header GET in and a 100-byte keep-alive response back, through the real parser
callbacks, exchange, selector, counters and head builders. Syscalls, the event loop and
the kernel's loopback delivery are left out on purpose: this isolates what the Python code
costs, so a hot-path change can be measured to a tenth of a microsecond on a busy machine
(wrk on a shared 2-core box cannot). `--profile` prints the cProfile top 25 by own time.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import pstats
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import uvloop

from router.config.loader import parse_config
from router.proxy.client import ClientConnection
from router.proxy.core import ProxyCore
from router.proxy.upstream import UpstreamConnection
from router.state.registry import Registry
from router.state.snapshot import SnapshotHolder

CONFIG = """
listen: {proxy: "127.0.0.1:0", admin: "127.0.0.1:0"}
strategy: round_robin
access_log: false
regions:
  - {id: r1, endpoint: "http://127.0.0.1:18002"}
"""
REQUEST = (
    b"GET /api/items?id=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 26 Nov 2026 06:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
    + b"x"
    * 100
)


class FakeTransport:
    """Enough of a transport for the protocols: writes are kept, never sent."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


async def measure(n: int, profile: bool) -> None:
    loop = asyncio.get_running_loop()
    config = parse_config(CONFIG, env={})
    registry = Registry(config, now=time.monotonic())
    registry.set_probe_verdict("r1", True, time.monotonic(), "ok", time.time())
    core = ProxyCore(SnapshotHolder(registry.snapshot()), loop=loop)
    client = ClientConnection(core)
    client_transport = FakeTransport()
    client.connection_made(client_transport)  # type: ignore[arg-type]  # a fake transport
    endpoint = config.regions[0].endpoint
    upstream = UpstreamConnection(
        f"{endpoint.url} {endpoint.host}", endpoint.host, endpoint.host, lambda conn: None
    )
    upstream_transport = FakeTransport()
    upstream.connection_made(upstream_transport)  # type: ignore[arg-type]  # a fake transport
    core.pool.release(upstream, time.monotonic())

    def one() -> None:
        client.data_received(REQUEST)
        upstream.data_received(RESPONSE)

    for _ in range(1000):
        one()
    if b" 200 OK" not in client_transport.out[-1]:
        raise SystemExit(f"unexpected response: {client_transport.out[-1][:200]!r}")
    gc.collect()
    gc.freeze()
    if profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(n):
            one()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    collections_before = sum(s["collections"] for s in gc.get_stats())
    started = time.perf_counter()
    for _ in range(n):
        one()
    elapsed = time.perf_counter() - started
    collections = sum(s["collections"] for s in gc.get_stats()) - collections_before
    print(
        f"{elapsed / n * 1e6:.2f} us/request (Python path, no syscalls; {n} requests; "
        f"{collections} cyclic GC collections)"
    )


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    n = int(args[0]) if args else 50_000
    uvloop.run(measure(n, "--profile" in sys.argv))


if __name__ == "__main__":
    main()
