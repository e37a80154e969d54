"""c=256 against c=64, back to back per target: `python bench/concurrency.py [--targets ...]`.

Issue 12's bar "c=256 reaches at least 0.9 of c=64" is a ratio of two runs of one target.
`bench/run.py` measures the c=64 and the c=256 cells minutes apart, so the machine's drift
lands in that ratio; here each round runs, for every target in rotating order, wrk at c=64
and at c=256 back to back (which first alternates by round), and the figure is the median
of the per-round ratios. A round in which steal (the hypervisor running another guest,
/proc/stat) took 5% or more of the proxy's or the load's CPU during a target's pair is
reported and left out of that target's median. Same backend and pinning as bench/run.py;
the mypyc targets need BENCH_COMPILED_ROOT (bench/mypyc_build.sh).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.pair import Run, measure
from bench.targets import TARGETS, Endpoint, nginx_backend
from bench.throughput import BASE_CONNECTIONS, HIGH_CONNECTIONS, STEAL_SPOIL_PERCENT

SECONDS = 3


def pair_once(endpoint: Endpoint, high_first: bool) -> dict[int, Run]:
    order = (
        (HIGH_CONNECTIONS, BASE_CONNECTIONS) if high_first else (BASE_CONNECTIONS, HIGH_CONNECTIONS)
    )
    return {connections: measure(endpoint, connections, SECONDS) for connections in order}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="defaults-mypyc,bare-mypyc,nginx")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    keys = args.targets.split(",")
    unknown = sorted(set(keys) - {t.key for t in TARGETS})
    if unknown:
        parser.error(f"unknown targets: {', '.join(unknown)}")
    ratios: dict[str, list[float]] = {key: [] for key in keys}
    errors: dict[str, int] = {key: 0 for key in keys}
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        backend = stack.enter_context(nginx_backend(workdir))
        endpoints = {}
        for target in (t for t in TARGETS if t.key in keys):
            endpoints[target.key] = stack.enter_context(target.start(workdir, backend.port))
            measure(endpoints[target.key], HIGH_CONNECTIONS, 1)  # warm-up
        for i in range(args.rounds):
            for key in keys[i % len(keys) :] + keys[: i % len(keys)]:
                runs = pair_once(endpoints[key], high_first=i % 2 == 1)
                base, high = runs[BASE_CONNECTIONS], runs[HIGH_CONNECTIONS]
                ratio = high.requests_per_s / base.requests_per_s
                errors[key] += base.errors + high.errors
                steal = max(base.steal_percent, high.steal_percent)
                stalled = steal >= STEAL_SPOIL_PERCENT
                if not stalled:
                    ratios[key].append(ratio)
                print(
                    f"round {i + 1} {key:22s} c={BASE_CONNECTIONS} {base.requests_per_s:7.0f}/s "
                    f"{base.cpu_us:5.1f} us/req  c={HIGH_CONNECTIONS} {high.requests_per_s:7.0f}/s "
                    f"{high.cpu_us:5.1f} us/req  errors {base.errors + high.errors}  "
                    f"ratio {ratio:.2f}  steal {steal:.0f}%"
                    + ("  (stalled: left out)" if stalled else ""),
                    flush=True,
                )
    for key in keys:
        clean = ratios[key]
        if not clean:
            print(f"{key}: every round stalled, no figure")
            continue
        print(
            f"{key}: c={HIGH_CONNECTIONS}/c={BASE_CONNECTIONS} median "
            f"{statistics.median(clean):.2f} ({min(clean):.2f}-{max(clean):.2f}), "
            f"{len(clean)} of {args.rounds} rounds; "
            f"{errors[key]} errors in all rounds"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
