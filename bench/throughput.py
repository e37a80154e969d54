"""The side-by-side scenario: each target x size at c=64, then c=256 and c=1 on /small."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench import wrk
from bench.process import TargetError, cpu_seconds, foreign_cpu_seconds
from bench.targets import INSTALL_HINT, LOAD_CPU, Endpoint, Target, check_response

BASE_CONNECTIONS = 64
HIGH_CONNECTIONS = 256
SINGLE_CONNECTION = 1
CONCURRENCY_SIZE = "small"  # the c=256 and c=1 runs use the small response
FOREIGN_CPU_WARN_PERCENT = 5.0  # other processes using more than this share of a CPU: noisy

Log = Callable[[str], None]


def log_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What to run: sizes, and how long and how often each (target, size, c) cell is measured."""

    sizes: tuple[str, ...]
    duration_s: int
    runs: int
    warmup_s: int

    def cells(self) -> list[tuple[str, int]]:
        """(size, connections) in run order; c=256 and c=1 only when the small size is in."""
        cells = [(size, BASE_CONNECTIONS) for size in self.sizes]
        if CONCURRENCY_SIZE in self.sizes:
            cells += [(CONCURRENCY_SIZE, HIGH_CONNECTIONS), (CONCURRENCY_SIZE, SINGLE_CONNECTION)]
        return cells


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One measured wrk run and the CPU time spent during it, by whom."""

    result: wrk.WrkResult
    proxy_cpu_s: float | None  # None when there is no proxy (direct)
    backend_cpu_s: float
    foreign_cpu_s: float  # processes that are not ours: interference
    window_s: float  # wall time between the CPU readings (wrk's run plus its start and exit)

    @property
    def proxy_cpu_percent(self) -> float | None:
        """Share of one CPU the proxy used; near 100 means the proxy was the bottleneck."""
        if self.proxy_cpu_s is None:
            return None
        return 100 * self.proxy_cpu_s / self.window_s

    @property
    def foreign_cpu_percent(self) -> float:
        return 100 * self.foreign_cpu_s / self.window_s

    def _per_request_us(self, cpu_s: float | None) -> float | None:
        if cpu_s is None or self.result.requests == 0:
            return None
        return cpu_s * 1e6 / self.result.requests

    @property
    def proxy_cpu_us_per_request(self) -> float | None:
        return self._per_request_us(self.proxy_cpu_s)

    @property
    def backend_cpu_us_per_request(self) -> float | None:
        return self._per_request_us(self.backend_cpu_s)


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Cell:
    """All runs of one (target, size, connections); each figure is the median over runs."""

    target: str
    size: str
    connections: int
    samples: tuple[Sample, ...]

    @property
    def requests_per_s(self) -> float:
        return statistics.median(s.result.requests_per_s for s in self.samples)

    @property
    def p50_us(self) -> float:
        return statistics.median(s.result.p50_us for s in self.samples)

    @property
    def p99_us(self) -> float:
        return statistics.median(s.result.p99_us for s in self.samples)

    @property
    def proxy_cpu_us_per_request(self) -> float | None:
        return _median([s.proxy_cpu_us_per_request for s in self.samples])

    @property
    def backend_cpu_us_per_request(self) -> float | None:
        return _median([s.backend_cpu_us_per_request for s in self.samples])

    @property
    def proxy_cpu_percent(self) -> float | None:
        return _median([s.proxy_cpu_percent for s in self.samples])

    @property
    def max_foreign_cpu_percent(self) -> float:
        return max(s.foreign_cpu_percent for s in self.samples)

    @property
    def non_2xx_3xx(self) -> int:
        return sum(s.result.non_2xx_3xx for s in self.samples)

    @property
    def socket_errors(self) -> int:
        return sum(s.result.socket_errors.total for s in self.samples)


Status = Literal["ok", "skipped", "failed"]


@dataclass(slots=True, kw_only=True)
class Outcome:
    """What happened to one target: its cells, or why it was skipped or stopped early."""

    target: Target
    status: Status = "ok"
    note: str = ""
    log_tail: str = ""
    cells: list[Cell] = field(default_factory=list)

    def cell(self, size: str, connections: int) -> Cell | None:
        for cell in self.cells:
            if cell.size == size and cell.connections == connections:
                return cell
        return None


def measure(
    endpoint: Endpoint,
    backend: Endpoint,
    *,
    size: str,
    connections: int,
    plan: Plan,
    log: Log,
) -> Cell:
    """Warm up, then `plan.runs` wrk runs, reading CPU time of proxy and backend around each."""
    assert backend.child is not None, "the backend is a process we started"
    url = endpoint.url(f"/{size}")
    if plan.warmup_s > 0:
        wrk.run(url, connections=connections, duration_s=plan.warmup_s, cpu=LOAD_CPU)
    samples = []
    for run_index in range(1, plan.runs + 1):
        proxy = endpoint.child
        proxy_before = cpu_seconds(proxy.pid) if proxy is not None else None
        backend_before = cpu_seconds(backend.child.pid)
        foreign_before = foreign_cpu_seconds()
        started = time.monotonic()
        result = wrk.run(url, connections=connections, duration_s=plan.duration_s, cpu=LOAD_CPU)
        window_s = time.monotonic() - started
        foreign_cpu_s = foreign_cpu_seconds() - foreign_before
        backend_cpu_s = cpu_seconds(backend.child.pid) - backend_before
        proxy_cpu_s = (
            cpu_seconds(proxy.pid) - proxy_before
            if proxy is not None and proxy_before is not None
            else None
        )
        endpoint.ensure_alive()
        backend.ensure_alive()
        sample = Sample(
            result=result,
            proxy_cpu_s=proxy_cpu_s,
            backend_cpu_s=backend_cpu_s,
            foreign_cpu_s=foreign_cpu_s,
            window_s=window_s,
        )
        samples.append(sample)
        cpu = sample.proxy_cpu_us_per_request
        log(
            f"  {endpoint.name:<14} {size:>5} c={connections:<3} run {run_index}/{plan.runs}: "
            f"{result.requests_per_s:>10.0f} req/s  p50 {result.p50_us:>8.0f}us  "
            f"p99 {result.p99_us:>8.0f}us  cpu "
            + (f"{cpu:.1f}us/req" if cpu is not None else "-")
            + (f"  errors {result.errors}" if result.errors else "")
            + (
                f"  (other processes: {sample.foreign_cpu_percent:.0f}% CPU)"
                if sample.foreign_cpu_percent >= FOREIGN_CPU_WARN_PERCENT
                else ""
            )
        )
    return Cell(target=endpoint.name, size=size, connections=connections, samples=tuple(samples))


def run_target(
    target: Target, backend: Endpoint, plan: Plan, workdir: Path, log: Log = log_stderr
) -> Outcome:
    """Start the target, measure every cell, stop it. Never raises for a target's own failure."""
    outcome = Outcome(target=target)
    missing = target.missing_tools()
    if missing:
        outcome.status = "skipped"
        outcome.note = f"{', '.join(missing)} not installed; install with `{INSTALL_HINT}`"
        log(f"[{target.label}] skipped: {outcome.note}")
        return outcome
    log(f"[{target.label}] starting")
    try:
        with target.start(workdir, backend.port) as endpoint:
            for size, connections in plan.cells():
                check_response(endpoint, size)
                outcome.cells.append(
                    measure(
                        endpoint, backend, size=size, connections=connections, plan=plan, log=log
                    )
                )
    except TargetError as exc:
        outcome.status, outcome.note, outcome.log_tail = "failed", str(exc), exc.log_tail
    except wrk.WrkError as exc:
        outcome.status, outcome.note = "failed", str(exc)
    if outcome.status == "failed":
        log(f"[{target.label}] FAILED: {outcome.note}")
        if outcome.log_tail:
            log("  " + outcome.log_tail.replace("\n", "\n  "))
    return outcome


def run_all(
    targets: Sequence[Target],
    backend: Endpoint,
    plan: Plan,
    workdir: Path,
    log: Log = log_stderr,
) -> list[Outcome]:
    """Targets one after another against one backend, so each proxy has CPU 0 to itself."""
    return [run_target(target, backend, plan, workdir, log) for target in targets]
