"""Two compiled trees head to head, c=64 and c=1: `python bench/pair.py BASE NEW`.

A quicker instrument than `bench/run.py` for one change: only the two trees' "defaults"
target (or `--shape bare`; `--size 64k` or `1m` for another response than the 100 B
`/small`), no nginx, and per round one wrk run at c=64 (throughput and
CPU per request) and one at c=1 (added latency) against each tree, the order alternating.
Both trees run at once on the same backend and the same pinning as bench/run.py. A round
in which steal (the hypervisor running another guest, /proc/stat) took 5% or more of
either CPU during any of its runs is reported and left out; the summary is the median of
the per-round NEW/BASE ratios of CPU per request and req/s, and of the per-round p50
differences.

Build the trees first: `sh bench/mypyc_build.sh BASE_DIR` in the old checkout, the same in
the new one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import wrk
from bench.process import cpu_seconds, steal_seconds, steal_since
from bench.targets import (
    LOAD_CPU,
    PROXY_CPU,
    Endpoint,
    bare_config,
    defaults_config,
    nginx_backend,
    region_router,
)
from bench.throughput import STEAL_SPOIL_PERCENT

SHAPES = {"defaults": defaults_config, "bare": bare_config}
CELLS = ((64, 3), (1, 2))  # (connections, seconds)


@dataclass(frozen=True, slots=True)
class Run:
    requests_per_s: float
    cpu_us: float  # the router's CPU time per request
    p50_us: float
    steal_percent: float
    errors: int  # non-2xx/3xx answers plus socket errors


def measure(endpoint: Endpoint, connections: int, duration_s: int, size: str = "small") -> Run:
    assert endpoint.child is not None
    steal_before = steal_seconds((PROXY_CPU, LOAD_CPU))
    cpu_before = cpu_seconds(endpoint.child.pid)
    result = wrk.run(
        endpoint.url(f"/{size}"), connections=connections, duration_s=duration_s, cpu=LOAD_CPU
    )
    cpu_s = cpu_seconds(endpoint.child.pid) - cpu_before
    steal = steal_since(steal_before)
    endpoint.ensure_alive()
    return Run(
        requests_per_s=result.requests_per_s,
        cpu_us=cpu_s * 1e6 / max(1, result.requests),
        p50_us=result.p50_us,
        steal_percent=100 * steal / result.duration_s,
        errors=result.errors,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the tree before (bench/mypyc_build.sh)")
    parser.add_argument("new", type=Path, help="the tree after")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="defaults")
    parser.add_argument("--size", choices=("small", "64k", "1m"), default="small")
    args = parser.parse_args(argv)
    config = SHAPES[args.shape]
    with tempfile.TemporaryDirectory(prefix="bench-pair-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        backend = stack.enter_context(nginx_backend(workdir))
        trees = {
            name: stack.enter_context(
                region_router(workdir, backend.port, name=name, config=config, root=root)
            )
            for name, root in (("base", args.base), ("new", args.new))
        }
        for endpoint in trees.values():
            measure(endpoint, 64, 1)  # warm-up: pools, the latency estimates
        runs: dict[tuple[str, int], list[Run]] = {(n, c): [] for n in trees for c, _ in CELLS}
        stalled: set[tuple[int, int]] = set()
        for i in range(args.rounds):
            order = ["base", "new"] if i % 2 == 0 else ["new", "base"]
            for connections, duration_s in CELLS:
                got = {
                    name: measure(trees[name], connections, duration_s, args.size) for name in order
                }
                for name, run in got.items():
                    runs[(name, connections)].append(run)
                steal = max(run.steal_percent for run in got.values())
                if steal >= STEAL_SPOIL_PERCENT:
                    stalled.add((i, connections))
                print(
                    f"round {i + 1} c={connections}: "
                    + "  ".join(
                        f"{name} {r.requests_per_s:7.0f}/s {r.cpu_us:6.1f} us/req "
                        f"p50 {r.p50_us:5.0f} us"
                        for name, r in got.items()
                    )
                    + f"  steal {steal:.0f}%"
                    + ("  (stalled: left out)" if steal >= STEAL_SPOIL_PERCENT else ""),
                    flush=True,
                )
        for connections, _ in CELLS:
            pairs = [
                (new, base)
                for i, (new, base) in enumerate(
                    zip(runs[("new", connections)], runs[("base", connections)], strict=True)
                )
                if (i, connections) not in stalled
            ]
            if not pairs:
                print(f"c={connections}: every round stalled, no figure")
                continue
            cpu = statistics.median(n.cpu_us / b.cpu_us for n, b in pairs)
            rps = statistics.median(n.requests_per_s / b.requests_per_s for n, b in pairs)
            p50 = statistics.median(n.p50_us - b.p50_us for n, b in pairs)
            print(
                f"c={connections} ({len(pairs)} of {args.rounds} rounds, {args.shape}, "
                f"{args.size}): "
                f"CPU per request new/base {cpu:.3f}; req/s new/base {rps:.3f}; "
                f"p50 new - base {p50:+.0f} us"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
