"""The proxy's per-request Python cost, without sockets.

`python bench/hotpath.py [N] [--profile] [--shape bare|bare-log|latency3|defaults] [--all]`

One ClientConnection and one pooled UpstreamConnection on fake transports; each iteration
feeds a 4-header GET in and a 100-byte keep-alive response back, through the real parser
callbacks, exchange, selector, counters and head builders. Syscalls, the event loop and
the kernel's loopback delivery are left out on purpose: this isolates what the Python code
costs, so a hot-path change can be measured to a tenth of a microsecond on a busy machine
(wrk on a shared 2-core box cannot). `--profile` prints the cProfile top 25 by own time.

Shapes (the configs of bench/run.py's targets): ``bare`` (1 region, weighted, no access
log), ``bare-log`` (the same with the access log, to /dev/null), ``latency3`` (the repo's
config.yaml, latency over 3 regions, no access log) and ``defaults`` (the same with the
access log). ``--all`` measures each shape in turn, interleaved over 5 rounds.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import os
import pstats
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import uvloop

from bench import targets
from router.config.loader import parse_config
from router.proxy.accesslog import AccessLogger
from router.proxy.client import ClientConnection
from router.proxy.core import ProxyCore
from router.proxy.upstream import UpstreamConnection
from router.routing.load import LoadTable
from router.state.registry import Registry
from router.state.snapshot import SnapshotHolder

BACKEND_PORT = 18002
SHAPES = ("bare", "bare-log", "latency3", "defaults")
# latency3 with one feature taken away, to account for defaults vs bare feature by feature
# (bench/hotpath_ab.py --shape-b): not in --all.
VARIANTS = {
    "latency3-noroute": [(r"^routes:\n(?:  .*\n)+", "routes: []\n")],
    "latency3-noheaders": [
        (r"^response_headers: .*$", "response_headers: {region: false, request_id: false}")
    ],
    "weighted3": [(r"^strategy: latency$", "strategy: weighted")],
    "latency1": [
        (r"^routes:\n(?:  .*\n)+", "routes: []\n"),
        (r"^  - id: eu-west-1\n(?:    .*\n)+", ""),
        (r"^  - id: ap-south-1\n(?:    .*\n)+", ""),
    ],
}


def shape_config(shape: str, state_dir: Path) -> str:
    listen = {"proxy": "127.0.0.1:0", "admin": "127.0.0.1:0"}
    if shape.startswith("bare"):
        text = targets.bare_config(BACKEND_PORT, listen, state_dir)
    else:
        text = targets.defaults_config(BACKEND_PORT, listen, state_dir)
    logged = shape in ("bare-log", "defaults")
    text = re.sub(r"^access_log: .*$", f"access_log: {str(logged).lower()}", text, flags=re.M)
    for pattern, replacement in VARIANTS.get(shape, []):
        text, n = re.subn(pattern, replacement, text, count=1, flags=re.M)
        if n != 1:
            raise SystemExit(f"shape {shape}: config.yaml no longer matches {pattern!r}")
    return text


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


def build(
    shape: str, tmp: Path
) -> tuple[Callable[[], None], Callable[[], None], Callable[[], None]]:
    """One request/response function on the shape's config, and a function closing it."""
    loop = asyncio.get_running_loop()
    config = parse_config(shape_config(shape, tmp), env={})
    registry = Registry(config, now=time.monotonic())
    for region in config.regions:
        for _ in range(config.health_check.healthy_threshold):
            registry.set_probe_verdict(region.id, True, time.monotonic(), "ok", time.time())
    core = ProxyCore(SnapshotHolder(registry.snapshot()), loop=loop, loads=LoadTable())
    access_log = None
    if config.access_log:
        # Unbounded here: a tight loop never lets the writer in, so a bound would drop lines
        # and hide their cost; measure() waits for the writer inside the timed window.
        access_log = AccessLogger(loop, os.devnull, max_queued_bytes=1 << 62)
        access_log.bind(core.stats)
        core.access_log = access_log.record
    client = ClientConnection(core)
    client_transport = FakeTransport()
    client.connection_made(client_transport)  # type: ignore[arg-type]  # a fake transport
    upstreams = []
    for region in config.regions:
        endpoint = region.endpoint
        upstream = UpstreamConnection(
            f"{endpoint.url} {endpoint.host}", endpoint.host, endpoint.host, lambda conn: None
        )
        upstream.connection_made(FakeTransport())  # type: ignore[arg-type]  # a fake transport
        core.pool.release(upstream, time.monotonic())
        upstreams.append(upstream)

    def one() -> None:
        client.data_received(REQUEST)
        for upstream in upstreams:
            if upstream.exchange is not None:
                upstream.data_received(RESPONSE)
                return
        raise SystemExit("no upstream was bound: the request did not go out")

    def close() -> None:
        if access_log is not None:
            access_log.close()

    def drain() -> None:
        """Wait for the access log's writer to format and write every line so far."""
        if access_log is not None:
            access_log.flush()
            while access_log.pending_lines:
                time.sleep(0.0005)

    for _ in range(1000):
        one()
    if b" 200 OK" not in client_transport.out[-1]:
        raise SystemExit(f"unexpected response: {client_transport.out[-1][:200]!r}")
    return one, close, drain


def timed(one: Callable[[], None], drain: Callable[[], None], n: int) -> tuple[float, int]:
    """(us per request, cyclic GC collections) over ``n`` requests."""
    gc.collect()
    gc.freeze()
    collections_before = sum(s["collections"] for s in gc.get_stats())
    # CPU time, not wall time: on a shared machine, time spent descheduled is not ours.
    started = time.process_time()
    for _ in range(n):
        one()
    drain()  # the writer thread's CPU time is part of the cost
    elapsed = time.process_time() - started
    collections = sum(s["collections"] for s in gc.get_stats()) - collections_before
    return elapsed / n * 1e6, collections


async def measure(n: int, profile: bool, shapes: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="hotpath-") as tmp:
        built = {shape: build(shape, Path(tmp)) for shape in shapes}
        if profile:
            one = built[shapes[0]][0]
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(n):
                one()
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        else:
            rounds = 5 if len(shapes) > 1 else 1
            results: dict[str, list[float]] = {shape: [] for shape in shapes}
            collections = 0
            for r in range(rounds):
                for shape in shapes[r % len(shapes) :] + shapes[: r % len(shapes)]:
                    us, gcs = timed(built[shape][0], built[shape][2], n)
                    results[shape].append(us)
                    collections += gcs
            for shape in shapes:
                print(
                    f"{shape:>9}: {statistics.median(results[shape]):.2f} us/request "
                    f"(median of {rounds} x {n} requests; CPU time of the Python path, no syscalls)"
                )
            print(f"{collections} cyclic GC collections while measuring")
        for _, close, _ in built.values():
            close()


def main() -> None:
    argv = sys.argv[1:]
    shapes = ["bare"]
    if "--shape" in argv:
        shapes = [argv[argv.index("--shape") + 1]]
    if "--all" in argv:
        shapes = list(SHAPES)
    unknown = [s for s in shapes if s not in SHAPES and s not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown shape {unknown}; choose from {', '.join(SHAPES)}")
    args = [a for a in argv if not a.startswith("-") and a not in SHAPES and a not in VARIANTS]
    n = int(args[0]) if args else 50_000
    uvloop.run(measure(n, "--profile" in argv, shapes))


if __name__ == "__main__":
    main()
