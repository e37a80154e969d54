"""Linkerd's "beyond round robin" experiment at small scale, through region-router.

`python bench/latency_scenario.py [--duration 15] [--concurrency 32] [--quick]`

Three regions on loopback answer after ~5 ms. For each strategy (round_robin,
least_outstanding, latency) the router is started fresh and a closed-loop load generator
(aiohttp, fixed concurrency, 1 s client timeout) runs for ``--duration`` seconds; during
the middle third one region answers after 1 s instead. An all-healthy run (latency, nobody
slowed) is the baseline. The health path is never slowed, so only the strategy can move
traffic. Prints p50/p99/p99.9 and success rate per run and writes bench/results/latency.md.

Topology (2+ CPUs): the router alone on CPU 0; regions and the load generator on CPU 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):
    # `python bench/latency_scenario.py` puts bench/ on sys.path; imports need the repo root.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import aiohttp
from aiohttp import web

from bench.process import HAVE_TASKSET, Child, TargetError, free_ports, pinned, wait_ready

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bench" / "results"
PROXY_CPU, LOAD_CPU = 0, 1
STRATEGIES = ("round_robin", "least_outstanding", "latency")
READY_TIMEOUT_S = 30.0
WARMUP_S = 1.0

ROUTER_CONFIG = """\
listen: {{proxy: "127.0.0.1:{proxy}", admin: "127.0.0.1:{admin}"}}
access_log: false
reload: {{watch: false}}
state_dir: "{state}"
strategy: {strategy}
health_check: {{path: /health, interval: 1s, timeout: 500ms}}
regions:
{regions}
"""


# -- the regions (a child process) ---------------------------------------------------------


async def serve_regions(ports: Sequence[int], base_ms: float) -> None:
    """Each port is a region answering after ``base_ms``, plus what /_bench/delay set."""
    runners = []
    for port in ports:
        extra = {"s": 0.0}

        async def handle(request: web.Request, extra: dict[str, float] = extra) -> web.Response:
            await asyncio.sleep(base_ms / 1000 + extra["s"])
            return web.Response(text="ok")

        async def health(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def delay(request: web.Request, extra: dict[str, float] = extra) -> web.Response:
            extra["s"] = float(request.query["ms"]) / 1000
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_post("/_bench/delay", delay)
        app.router.add_get("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        runners.append(runner)
    await asyncio.Event().wait()


# -- the load --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float  # start, seconds since the measured run began
    latency_s: float  # a timed-out request counts as the time the client waited
    ok: bool


async def generate(
    url: str,
    *,
    concurrency: int,
    duration_s: float,
    timeout_s: float,
    slow_url: str | None,
    slow_ms: float,
) -> list[Sample]:
    samples: list[Sample] = []
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(until: float, t0: float, keep: bool) -> None:
            while (start := time.monotonic()) < until:
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                if keep:
                    samples.append(Sample(start - t0, time.monotonic() - start, ok))

        async def set_delay(at: float, ms: float) -> None:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            assert slow_url is not None
            async with session.post(f"{slow_url}/_bench/delay?ms={ms:g}") as resp:
                await resp.read()

        warm_until = time.monotonic() + WARMUP_S
        await asyncio.gather(*(client(warm_until, 0.0, False) for _ in range(concurrency)))
        t0 = time.monotonic()
        jobs = [client(t0 + duration_s, t0, True) for _ in range(concurrency)]
        if slow_url is not None:
            jobs += [set_delay(t0 + duration_s / 3, slow_ms), set_delay(t0 + 2 * duration_s / 3, 0)]
        await asyncio.gather(*jobs)
    return samples


# -- one run ---------------------------------------------------------------------------------


def run_one(
    workdir: Path, strategy: str, *, slowed: bool, args: argparse.Namespace
) -> list[Sample]:
    """Fresh regions and router, one measured load run; both children stopped after."""
    prefix = workdir / f"{strategy}-{'slow' if slowed else 'healthy'}"
    (prefix / "state").mkdir(parents=True)
    region_ports = free_ports(args.regions)
    proxy, admin = free_ports(2)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    regions = Child(
        "regions",
        pinned(
            LOAD_CPU if HAVE_TASKSET else None,
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve-regions",
                "--ports",
                ",".join(map(str, region_ports)),
                "--base-ms",
                str(args.base_ms),
            ],
        ),
        prefix / "regions.log",
        env=env,
    )
    router: Child | None = None
    try:
        wait_ready(regions, region_ports[-1], "/health", READY_TIMEOUT_S)
        conf = prefix / "config.yaml"
        conf.write_text(
            ROUTER_CONFIG.format(
                proxy=proxy,
                admin=admin,
                state=prefix / "state",
                strategy=strategy,
                regions="\n".join(
                    f"  - {{id: r{i}, endpoint: 'http://127.0.0.1:{port}'}}"
                    for i, port in enumerate(region_ports)
                ),
            )
        )
        router = Child(
            "region-router",
            pinned(
                PROXY_CPU if HAVE_TASKSET else None,
                [sys.executable, "-m", "router", "run", "-c", str(conf)],
            ),
            prefix / "router.log",
            cwd=REPO_ROOT,
            env=env,
        )
        wait_ready(router, admin, "/readyz", READY_TIMEOUT_S)
        samples = asyncio.run(
            generate(
                f"http://127.0.0.1:{proxy}/work",
                concurrency=args.concurrency,
                duration_s=args.duration,
                timeout_s=args.timeout,
                slow_url=f"http://127.0.0.1:{region_ports[0]}" if slowed else None,
                slow_ms=args.slow_ms,
            )
        )
        router.ensure_alive()
        return samples
    finally:
        if router is not None:
            router.stop()
        regions.stop()


# -- numbers ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    window: str
    n: int
    p50_s: float
    p99_s: float
    p999_s: float
    success: float


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


def summarize(label: str, window: str, samples: Sequence[Sample]) -> Row:
    latencies = sorted(s.latency_s for s in samples)
    ok = sum(1 for s in samples if s.ok)
    return Row(
        label=label,
        window=window,
        n=len(samples),
        p50_s=percentile(latencies, 50),
        p99_s=percentile(latencies, 99),
        p999_s=percentile(latencies, 99.9),
        success=ok / len(samples) if samples else float("nan"),
    )


def windows(label: str, samples: Sequence[Sample], duration_s: float) -> list[Row]:
    third = duration_s / 3
    slow = [s for s in samples if third <= s.at_s < 2 * third]
    return [summarize(label, "slow third", slow), summarize(label, "whole run", samples)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def table(rows: Sequence[Row]) -> str:
    head = "| run | window | requests | p50 | p99 | p99.9 | success |\n"
    head += "|---|---|---:|---:|---:|---:|---:|\n"
    return head + "".join(
        f"| {r.label} | {r.window} | {r.n} | {ms(r.p50_s)} | {ms(r.p99_s)} | "
        f"{ms(r.p999_s)} | {r.success * 100:.2f}% |\n"
        for r in rows
    )


def verdict(rows: Sequence[Row]) -> list[str]:
    by = {(r.label, r.window): r for r in rows}
    base = by.get(("all healthy (latency)", "slow third"))
    lat = by.get(("latency", "slow third"))
    rr = by.get(("round_robin", "slow third"))
    lines = []
    if base and lat:
        ratio = lat.p99_s / base.p99_s
        ok = "PASS" if ratio <= 2 else "FAIL"
        lines.append(
            f"- {ok}: latency p99 while one region is slow is {ratio:.2f}x the all-healthy "
            f"p99 ({ms(lat.p99_s)} vs {ms(base.p99_s)}; target <= 2x)"
        )
    if lat and rr:
        ratio = rr.p99_s / lat.p99_s
        ok = "PASS" if ratio >= 10 else "FAIL"
        lines.append(
            f"- {ok}: round_robin's p99 is {ratio:.0f}x latency's "
            f"({ms(rr.p99_s)} vs {ms(lat.p99_s)}; target >= 10x)"
        )
    return lines


def render(rows: Sequence[Row], args: argparse.Namespace, command: str) -> str:
    return (
        '# Latency under one slow region (Linkerd\'s "beyond round robin", small scale)\n\n'
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} with `{command}`.\n\n"
        f"{args.regions} regions on loopback answering after {args.base_ms:g} ms; during the "
        f"middle third of each {args.duration:g} s run one region answers after "
        f"{args.slow_ms / 1000:g} s. Closed-loop load: {args.concurrency} concurrent "
        f"clients (aiohttp), {args.timeout:g} s client timeout (a timed-out request counts "
        "as failed, at the time the client waited). The health path is never slowed: only "
        "the strategy moves traffic. Router on CPU 0; regions and load on CPU 1 "
        f"({os.cpu_count()} CPUs, pinning {'on' if HAVE_TASKSET else 'off'}).\n\n"
        + table(rows)
        + "\n"
        + "\n".join(verdict(rows))
        + "\n"
    )


# -- CLI -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/latency_scenario.py", description=__doc__)
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--timeout", type=float, default=1.0, help="client timeout, seconds")
    p.add_argument("--regions", type=int, default=3)
    p.add_argument("--base-ms", type=float, default=5.0, help="every region's base latency")
    p.add_argument("--slow-ms", type=float, default=1000.0, help="the slow region's latency")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--quick", action="store_true", help="6 s runs (a smoke test)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--serve-regions", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ports", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.duration = 6.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_regions:
        import uvloop

        uvloop.run(serve_regions([int(p) for p in args.ports.split(",")], args.base_ms))
        return 0
    if HAVE_TASKSET and (os.cpu_count() or 1) > LOAD_CPU:
        os.sched_setaffinity(0, {LOAD_CPU})  # the load generator shares CPU 1 with regions
    strategies = [s for s in args.strategies.split(",") if s]
    runs = [("all healthy (latency)", "latency", False)] + [(s, s, True) for s in strategies]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rr-latency-") as tmp:
        for label, strategy, slowed in runs:
            print(f"running {label} ({args.duration:g} s)...", file=sys.stderr, flush=True)
            try:
                samples = run_one(Path(tmp), strategy, slowed=slowed, args=args)
            except TargetError as exc:
                print(f"{label}: {exc}\n{exc.log_tail}", file=sys.stderr)
                return 1
            rows += windows(label, samples, args.duration)
    command = "python bench/latency_scenario.py " + " ".join(argv or sys.argv[1:])
    text = render(rows, args, command.strip())
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
