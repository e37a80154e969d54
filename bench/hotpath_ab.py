"""bench/hotpath.py between trees, in many short alternating batches: a before/after of the
Python path that resolves a few tenths of a microsecond on a shared machine.

`python bench/hotpath_ab.py ROOT_A ROOT_B [--shape defaults] [--shape-b SHAPE] [--batches 40]
[--n 5000]`; with ``--shape-b`` (and the same root twice) it compares two shapes of one tree
instead, e.g. ``latency3`` vs ``latency3-noroute``: what one feature costs.

Each ROOT is a checkout or a compiled copy (`sh bench/mypyc_build.sh DIR`). One process per
root builds the shape once (hotpath.build, from that root's own code) and stays up; the
driver then asks each for a batch of N requests in turn (order rotating every batch) and
reads back its CPU time per request (hotpath.timed: the access-log writer's CPU
included). Run-long drift hits both roots alike, so the per-batch ratio B/A is the figure
to quote; its median and quartiles are printed with each root's median and minimum.
Every process is pinned to the same CPU (0) so they share caches and frequency alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = """
import sys, tempfile, uvloop
from pathlib import Path
from bench.hotpath import build, timed

async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="hotpath-ab-") as tmp:
        one, close, drain = build(sys.argv[1], Path(tmp))
        print("ready", flush=True)
        for line in sys.stdin:
            us, _ = timed(one, drain, int(line))
            print(us, flush=True)
        close()

uvloop.run(main())
"""


def start(root: Path, shape: str, cpu: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    argv = ["taskset", "-c", str(cpu), sys.executable, "-c", WORKER, shape]
    proc = subprocess.Popen(
        argv, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"{root}: the hot path did not start")
    return proc


def batch(proc: subprocess.Popen[str], n: int) -> float:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{n}\n")
    proc.stdin.flush()
    return float(proc.stdout.readline())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs=2, type=Path)
    ap.add_argument("--shape", default="defaults")
    ap.add_argument("--shape-b", default=None, help="B's shape (default: --shape)")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--n", type=int, default=5000, help="requests per batch")
    ap.add_argument("--cpu", type=int, default=0)
    a = ap.parse_args()
    shapes = (a.shape, a.shape_b or a.shape)
    procs = [start(root.resolve(), s, a.cpu) for root, s in zip(a.roots, shapes, strict=True)]
    results: list[list[float]] = [[], []]
    try:
        for p in procs:  # warm-up, unmeasured
            batch(p, a.n)
        for b in range(a.batches):
            for i in (0, 1) if b % 2 == 0 else (1, 0):
                results[i].append(batch(procs[i], a.n))
    finally:
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
            p.wait(timeout=30)
    for root, shape, us in zip(a.roots, shapes, results, strict=True):
        print(
            f"{root!s:40} median {statistics.median(us):6.2f} us/request, "
            f"min {min(us):6.2f} ({len(us)} x {a.n}, shape {shape})"
        )
    ratios = sorted(y / x for x, y in zip(results[0], results[1], strict=True))
    q = statistics.quantiles(ratios, n=4)
    median = statistics.median(ratios)
    print(f"B/A per batch: median {median:.3f} (quartiles {q[0]:.3f}-{q[2]:.3f})")


if __name__ == "__main__":
    main()
