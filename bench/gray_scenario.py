"""Gray failures through region-router: a blackholed region, a crashed tier, a stalled body.

`python bench/gray_scenario.py [--quick] [--failover-runs 10] [--only defaults,hedging,...]`
(a full run writes bench/results/gray.md)

Three regions on loopback (a child process, ~2 ms per answer); region r0 sits behind a
relay (tests/faults.py) that can stop moving bytes while still accepting connections
(blackhole) or reset everything and refuse new connections (crash). The router is the real
CLI (``python -m router run``) in its own process; 20 closed-loop GET clients (aiohttp,
40 s client timeout, so a stalled request is measured, never cut short).

1. Blackhole, latency strategy, health interval 500 ms / timeout 400 ms, defaults
   otherwise; then the same with ``hedging: {enabled: true}``. Reports failed GETs, the
   slowest GET against (time for r0 to leave rotation + 1.5 s), requests (not probes)
   reaching r0 later than 2 s after the blackhole, and the p99.9 of requests started in
   the window [blackhole - 1 s, blackhole + 4 s] against max(250 ms, 5 x the healthy p99).
2. Priority failover: r0 alone in tier 0, r1 and r2 in tier 1, ``max_retries: 1``,
   ``budget_percent: 100%``; the relay crashes under load; failed GETs over N runs.
3. A response that stalls mid-body (headers and 100 of 1000 bytes, then nothing), with
   ``timeouts.idle: 2s`` and hedging on: the time until the client sees the abort, and
   the bytes it got (must be exactly the 100 sent, never more).

Topology (2+ CPUs): router on CPU 0; regions, relay and load on CPU 1. Timings only; the
behaviour is asserted by tests/proxy/test_gray_failures.py and test_tail_latency.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import aiohttp
from aiohttp import web

from bench.process import HAVE_TASKSET, Child, free_ports, pinned
from tests.faults import LoadResult, Relay, get_load

REPO_ROOT = Path(__file__).resolve().parent.parent
PROXY_CPU, LOAD_CPU = 0, 1
CLIENTS = 20

CONFIG = """\
listen: {{proxy: "127.0.0.1:{proxy}", admin: "127.0.0.1:{admin}"}}
access_log: false
reload: {{watch: false}}
state_dir: "{state}"
strategy: {strategy}
health_check: {{path: /health, interval: 500ms, timeout: 400ms}}
{extra}
regions:
{regions}
"""


# -- regions (a child process) -------------------------------------------------------------


async def serve_regions(ports: Sequence[int]) -> None:
    async def work(request: web.Request) -> web.Response:
        await asyncio.sleep(0.002)
        return web.Response(text="ok")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    for port in ports:
        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/{tail:.*}", work)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


# -- the router ----------------------------------------------------------------------------


class Router:
    def __init__(self, workdir: Path, name: str, regions: str, strategy: str, extra: str):
        self.proxy, self.admin = free_ports(2)
        prefix = workdir / name
        (prefix / "state").mkdir(parents=True)
        conf = prefix / "config.yaml"
        conf.write_text(
            CONFIG.format(
                proxy=self.proxy,
                admin=self.admin,
                state=prefix / "state",
                strategy=strategy,
                extra=extra,
                regions=regions,
            )
        )
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "router", "run", "-c", str(conf)]
        self.child = Child(
            "region-router",
            pinned(PROXY_CPU if HAVE_TASKSET else None, argv),
            prefix / "router.log",
            cwd=REPO_ROOT,
            env=env,
        )

    async def ready(self, session: aiohttp.ClientSession, eligible: int) -> None:
        """Until ``eligible`` regions are healthy (the first probe round is done)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self.child.ensure_alive()
            try:
                async with session.get(f"http://127.0.0.1:{self.admin}/admin/regions") as r:
                    regions = await r.json()
                    items = regions["regions"] if isinstance(regions, dict) else regions
                    if sum(1 for x in items if x["state"] == "healthy") >= eligible:
                        return
            except (aiohttp.ClientError, OSError, ValueError):
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"router not ready:\n{self.child.log_tail()}")

    async def left_rotation_at(self, session: aiohttp.ClientSession, region: str) -> float:
        """Poll until ``region`` is out of rotation; the monotonic time it was seen so."""
        url = f"http://127.0.0.1:{self.admin}/admin/regions/{region}"
        while True:
            async with session.get(url) as r:
                state = (await r.json())["state"]
            if state not in ("healthy", "recovering"):
                return time.monotonic()
            await asyncio.sleep(0.02)

    async def metrics(self, session: aiohttp.ClientSession, prefix: str) -> dict[str, float]:
        async with session.get(f"http://127.0.0.1:{self.admin}/metrics") as r:
            text = await r.text()
        return {
            line.split()[0]: float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith(prefix)
        }

    def stop(self) -> None:
        self.child.stop()


def region_lines(relay: Relay, ports: Sequence[int], priorities: Sequence[int] | None) -> str:
    urls = [relay.url] + [f"http://127.0.0.1:{p}" for p in ports[1:]]
    prio = priorities or [0] * len(urls)
    return "\n".join(
        f"  - {{id: r{i}, endpoint: '{u}', priority: {prio[i]}}}" for i, u in enumerate(urls)
    )


# -- numbers -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    rank = max(1, -(-len(s) * q // 100))
    return s[min(len(s), int(rank)) - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


# -- scenario 1: blackhole -----------------------------------------------------------------


async def blackhole(
    workdir: Path, ports: Sequence[int], label: str, extra: str, args: argparse.Namespace
) -> list[str]:
    relay = Relay(ports[0])
    await relay.start()
    router = Router(workdir, label, region_lines(relay, ports, None), "latency", extra)
    try:
        async with aiohttp.ClientSession() as session:
            await router.ready(session, 3)
            url = f"http://127.0.0.1:{router.proxy}/work"
            stop = asyncio.Event()
            result = LoadResult()
            load = asyncio.ensure_future(get_load(url, CLIENTS, stop, result, timeout_s=40))
            await asyncio.sleep(1.0 + args.healthy_s)  # 1 s warm-up, then the healthy phase
            t_bh = time.monotonic()
            relay.blackhole()
            t_left = await router.left_rotation_at(session, "r0")
            await asyncio.sleep(max(0.0, t_bh + args.after_s - time.monotonic()))
            stop.set()
            await load
            retries = await router.metrics(session, "router_retries_total")
            hedges = await router.metrics(session, "router_hedges_total")
        router.child.ensure_alive()
    finally:
        router.stop()
        await relay.close()
    answers = [a for a in result.answers if a.started >= t_bh - args.healthy_s]
    healthy = [a.latency_s for a in answers if a.started + a.latency_s < t_bh]
    around = [a.latency_s for a in answers if t_bh - 1 <= a.started <= t_bh + 4]
    failed = [a for a in answers if a.status != 200]
    leave = t_left - t_bh
    slowest = max(a.latency_s for a in answers)
    p99_healthy = percentile(healthy, 99)
    p999_around = percentile(around, 99.9)
    bar = max(0.25, 5 * p99_healthy)
    late = relay.requests_after(t_bh + 2.0)
    return [
        f"### {label}\n",
        f"- GETs: {len(answers)}; failed: **{len(failed)}**",
        f"- r0 left rotation {ms(leave)} after the blackhole; slowest GET **{ms(slowest)}** "
        f"(bar: {ms(leave + 1.5)}) {'PASS' if slowest <= leave + 1.5 else 'FAIL'}",
        f"- requests reaching r0 later than 2 s after the blackhole: **{late}**",
        f"- healthy p99 {ms(p99_healthy)}; p99.9 around the event ({len(around)} GETs) "
        f"**{ms(p999_around)}** (bar: {ms(bar)}) {'PASS' if p999_around <= bar else 'over'}",
        f"- retries {fmt(retries)}; hedges {fmt(hedges)}\n",
    ]


def fmt(metrics: dict[str, float]) -> str:
    if not metrics:
        return "none"
    junk = '"}'
    return ", ".join(
        f"{k.split('=', 1)[1].strip(junk)}={int(v)}" for k, v in sorted(metrics.items())
    )


# -- scenario 2: priority failover ---------------------------------------------------------


async def failover_runs(workdir: Path, ports: Sequence[int], runs: int) -> list[str]:
    extra = "retries: {max_retries: 1, budget_percent: 100%}"
    lines = ["### Priority failover: tier 0 crashes under load\n"]
    total_failed = total = 0
    for i in range(runs):
        relay = Relay(ports[0])
        await relay.start()
        router = Router(workdir, f"failover-{i}", region_lines(relay, ports, [0, 1, 1]),
                        "priority", extra)  # fmt: skip
        try:
            async with aiohttp.ClientSession() as session:
                await router.ready(session, 3)
                stop = asyncio.Event()
                result = LoadResult()
                url = f"http://127.0.0.1:{router.proxy}/work"
                load = asyncio.ensure_future(get_load(url, CLIENTS, stop, result, timeout_s=40))
                await asyncio.sleep(1.5)
                await relay.kill()
                await asyncio.sleep(1.5)
                stop.set()
                await load
            router.child.ensure_alive()
        finally:
            router.stop()
            await relay.close()
        failed = len(result.failed())
        total_failed += failed
        total += len(result.answers)
        print(f"  failover run {i + 1}: {failed} failed of {len(result.answers)}", file=sys.stderr)
    lines.append(f"- {runs} runs, {total} GETs; failed: **{total_failed}**\n")
    return lines


# -- scenario 3: a body that stalls --------------------------------------------------------


async def stalled_body(workdir: Path, ports: Sequence[int], idle_s: float) -> list[str]:
    done = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"GET /health "):
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100)
            await writer.drain()
            await done.wait()  # the rest never comes
        except (OSError, asyncio.IncompleteReadError):
            pass
        writer.close()

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    regions = (
        f"  - {{id: stall, endpoint: 'http://127.0.0.1:{port}', priority: 0}}\n"
        f"  - {{id: r1, endpoint: 'http://127.0.0.1:{ports[1]}', priority: 1}}"
    )
    extra = (
        f"timeouts: {{idle: {idle_s:g}s, per_try: 300ms}}\nhedging: {{enabled: true, delay: 50ms}}"
    )
    router = Router(workdir, "stall", regions, "priority", extra)
    took: list[float] = []
    got: list[int] = []
    try:
        async with aiohttp.ClientSession() as session:
            await router.ready(session, 1)
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", router.proxy)
            t0 = time.monotonic()
            writer.write(b"GET /work HTTP/1.1\r\nHost: a\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            n = 0
            while chunk := await reader.read(65536):
                n += len(chunk)
            took.append(time.monotonic() - t0)
            got.append(n)
            writer.close()
    finally:
        router.stop()
        done.set()
        server.close()
        await server.wait_closed()
    worst = max(took)
    return [
        "### A response that stalls mid-body\n",
        f"- 3 requests; the client saw the abort after {', '.join(ms(t) for t in took)} "
        f"(timeouts.idle {idle_s:g} s; bar idle + 1 s: "
        f"{'PASS' if worst <= idle_s + 1 else 'FAIL'})",
        f"- body bytes received: {got} (100 sent before the stall; never more, never spliced)\n",
    ]


# -- CLI -----------------------------------------------------------------------------------


async def scenario(args: argparse.Namespace, ports: Sequence[int], workdir: Path) -> str:
    only = set(args.only.split(","))
    out = []
    if "defaults" in only:
        out += await blackhole(workdir, ports, "Blackhole, defaults", "", args)
    if "hedging" in only:
        extra = "hedging: {enabled: true}"
        out += await blackhole(workdir, ports, "Blackhole, hedging on", extra, args)
    if "failover" in only:
        out += await failover_runs(workdir, ports, args.failover_runs)
    if "stall" in only:
        out += await stalled_body(workdir, ports, 2.0)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/gray_scenario.py", description=__doc__)
    p.add_argument("--failover-runs", type=int, default=10)
    p.add_argument("--healthy-s", type=float, default=3.0, help="healthy phase, seconds")
    p.add_argument("--after-s", type=float, default=5.0, help="load after the blackhole")
    p.add_argument("--quick", action="store_true", help="3 failover runs, shorter phases")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    p.add_argument("--only", default="defaults,hedging,failover,stall", help="scenarios to run")
    p.add_argument("--serve-regions", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_regions:
        import uvloop

        uvloop.run(serve_regions([int(x) for x in args.serve_regions.split(",")]))
        return 0
    if args.quick:
        args.failover_runs, args.healthy_s, args.after_s = 3, 2.0, 4.0
    if HAVE_TASKSET and (os.cpu_count() or 1) > LOAD_CPU:
        os.sched_setaffinity(0, {LOAD_CPU})
    ports = free_ports(3)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with tempfile.TemporaryDirectory(prefix="rr-gray-") as tmp:
        regions = Child(
            "regions",
            pinned(
                LOAD_CPU if HAVE_TASKSET else None,
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--serve-regions",
                    ",".join(map(str, ports)),
                ],
            ),
            Path(tmp) / "regions.log",
            env=env,
        )
        try:
            import uvloop

            text = uvloop.run(scenario(args, ports, Path(tmp)))
        finally:
            regions.stop()
    command = "python bench/gray_scenario.py " + " ".join(argv or sys.argv[1:])
    report = f"## Gray failures (`{command.strip()}`, {os.cpu_count()} CPUs)\n\n{text}"
    print(report)
    if args.only == p.get_default("only"):  # a partial run does not replace the report
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gray.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
