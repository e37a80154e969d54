"""CLI: `python bench/run.py [--quick] [--only small,64k,1m] [--duration 3] [--rounds 5]`.

Starts a backend nginx and every target, measures in paired rounds (each round runs wrk once
against every target, rotating the order), writes bench/results/latest.*.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):
    # `python bench/run.py` puts bench/ on sys.path; the package imports need the repo root.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import report, throughput
from bench.process import HAVE_TASKSET, TargetError
from bench.targets import (
    DEFAULT_TARGETS,
    INSTALL_HINT,
    LOAD_CPU,
    PROXY_CPU,
    SIZES,
    TARGETS,
    nginx_backend,
)

QUICK_DURATION_S = 2
QUICK_RUNS = 1
DEFAULT_DURATION_S = 3
DEFAULT_RUNS = 5
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _choices(value: str, allowed: list[str], what: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {unknown or value!r}; choose from {','.join(allowed)}"
        )
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Side-by-side benchmark in paired rounds: direct, region-router "
        "(defaults and bare), nginx, optionally HAProxy.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_RUNS} run of {QUICK_DURATION_S} s per cell "
        "(explicit --duration/--runs still win)",
    )
    parser.add_argument(
        "--only",
        type=lambda v: _choices(v, list(SIZES), "size"),
        default=tuple(SIZES),
        help=f"comma-separated sizes (default {','.join(SIZES)}); "
        "the c=256 and c=1 runs need 'small'",
    )
    parser.add_argument(
        "--targets",
        type=lambda v: _choices(v, [t.key for t in TARGETS], "target"),
        default=DEFAULT_TARGETS,
        help=f"comma-separated targets of {','.join(t.key for t in TARGETS)} "
        f"(default {','.join(DEFAULT_TARGETS)}; the workers set: "
        "router-w1,router-w2,nginx,nginx-w2; add haproxy for HAProxy)",
    )
    parser.add_argument(
        "--duration", type=int, help=f"seconds per run (default {DEFAULT_DURATION_S})"
    )
    parser.add_argument(
        "--rounds",
        "--runs",
        dest="runs",
        type=int,
        help=f"paired rounds per cell, each running every target once (default {DEFAULT_RUNS})",
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="warm-up seconds per cell (default 1)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="directory for latest.md/latest.json"
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = QUICK_DURATION_S if args.quick else DEFAULT_DURATION_S
    if args.runs is None:
        args.runs = QUICK_RUNS if args.quick else DEFAULT_RUNS
    if args.duration < 1 or args.runs < 1 or args.warmup < 0:
        parser.error("--duration and --runs must be >= 1, --warmup >= 0")
    return args


def _first_line(argv: list[str]) -> str:
    """First line a version command prints (on stdout or stderr), or why there is none."""
    if shutil.which(argv[0]) is None:
        return f"{argv[0]}: not installed"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{argv[0]}: {exc}"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0].strip() if text else f"{argv[0]}: no version output"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine_info() -> dict[str, str]:
    repo = Path(__file__).resolve().parent.parent
    git = _first_line(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"])
    pinning = (
        f"proxy under test on CPU {PROXY_CPU}; backend nginx and wrk on CPU {LOAD_CPU} (taskset)"
        if HAVE_TASKSET
        else "NONE (taskset not found; install util-linux)"
    )
    return {
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "wrk": _first_line(["wrk", "-v"]).split(" Copyright")[0],
        "nginx": _first_line(["nginx", "-v"]),
        "haproxy": _first_line(["haproxy", "-v"]).split(" - ")[0],
        "git": git,
        "loadavg_start": _loadavg(),
        "pinning": pinning,
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    del frame
    raise SystemExit(128 + signum)  # unwinds through every `finally`, stopping our children


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    log = throughput.log_stderr
    notes: list[str] = []
    missing = [tool for tool in ("wrk", "nginx", "haproxy") if shutil.which(tool) is None]
    if missing:
        log(f"missing: {', '.join(missing)}. Install with: {INSTALL_HINT}")
    if "wrk" in missing or "nginx" in missing:
        log("wrk and nginx (the backend) are required for every target; nothing to measure.")
        return 2
    if not HAVE_TASKSET:
        notes.append("taskset not found (apt-get install -y util-linux): processes NOT pinned")
    if (os.cpu_count() or 1) < 2:
        notes.append("fewer than 2 CPUs: proxy and load share a CPU; numbers are not comparable")
    load_1m = float(_loadavg().split()[0]) if _loadavg() != "?" else 0.0
    if load_1m > 0.5:
        notes.append(f"1-minute load average was {load_1m:.2f} at start: other work was running")

    plan = throughput.Plan(
        sizes=args.only, duration_s=args.duration, runs=args.runs, warmup_s=args.warmup
    )
    targets = [t for t in TARGETS if t.key in args.targets]
    machine = machine_info()
    started_at = _now()
    with tempfile.TemporaryDirectory(prefix="region-router-bench-") as tmp:
        workdir = Path(tmp)
        try:
            with nginx_backend(workdir) as backend:
                log(f"backend nginx on 127.0.0.1:{backend.port}: {backend.child!r}")
                outcomes = throughput.run_all(targets, backend, plan, workdir, log)
        except TargetError as exc:
            log(f"backend nginx failed to start: {exc}\n{exc.log_tail}")
            return 2
    machine["loadavg_end"] = _loadavg()
    result = report.Report(
        command=shlex.join(sys.orig_argv),
        started_at=started_at,
        finished_at=_now(),
        machine=machine,
        plan=plan,
        notes=tuple(notes),
        outcomes=tuple(outcomes),
    )
    md_path, json_path = report.write(result, args.out)
    print(report.render_markdown(result))
    log(f"wrote {md_path} and {json_path}")
    return 0 if all(o.status != "failed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
