"""The side-by-side scenario in paired rounds: every target x size at c=64, then c=256 and c=1.

Every target is started first and stays up. For each cell (size, connections), each round
runs wrk once against every target, in an order that rotates from round to round, so the
machine's drift (30%/hour on a shared VM) lands on all targets alike; the report divides
each target's req/s by the reference's *in the same round* and takes the median of those
ratios.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bench import wrk
from bench.process import (
    TargetError,
    cpu_seconds,
    foreign_cpu_seconds,
    steal_seconds,
    steal_since,
)
from bench.targets import INSTALL_HINT, LOAD_CPU, PROXY_CPU, Endpoint, Target, check_response

BASE_CONNECTIONS = 64
HIGH_CONNECTIONS = 256
SINGLE_CONNECTION = 1
CONCURRENCY_SIZE = "small"  # the c=256 and c=1 runs use the small response
FOREIGN_CPU_WARN_PERCENT = 5.0  # other processes using more than this share of a CPU: noisy
# The hypervisor took more than this share of the proxy's or the load's CPU during a run:
# that round is left out of the paired ratios (a stall hits one target's turn, not both).
STEAL_SPOIL_PERCENT = 5.0
MEASURED_CPUS = (PROXY_CPU, LOAD_CPU)

Log = Callable[[str], None]


def log_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What to run: sizes, and how long and how many rounds each (size, c) cell is measured."""

    sizes: tuple[str, ...]
    duration_s: int
    runs: int  # rounds: each runs every target once
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
    round: int = 0  # which round of its cell: samples of one round are paired
    proxy_cpu_s: float | None  # None when there is no proxy (direct)
    backend_cpu_s: float
    foreign_cpu_s: float  # processes that are not ours: interference
    window_s: float  # wall time between the CPU readings (wrk's run plus its start and exit)
    steal_s: float = 0.0  # the larger of the proxy CPU's and the load CPU's steal time

    @property
    def steal_percent(self) -> float:
        return 100 * self.steal_s / self.window_s

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

    @property
    def max_steal_percent(self) -> float:
        return max(s.steal_percent for s in self.samples)

    def spoiled_rounds(self) -> set[int]:
        """Rounds in which the hypervisor stalled this target's run."""
        return {s.round for s in self.samples if s.steal_percent >= STEAL_SPOIL_PERCENT}

    def ratios_by_round(self, reference: Cell) -> dict[int, float]:
        """Round -> req/s over the reference's req/s of that round, for each round both ran."""
        ref = {s.round: s.result.requests_per_s for s in reference.samples}
        return {
            s.round: s.result.requests_per_s / ref[s.round]
            for s in self.samples
            if ref.get(s.round)
        }

    def round_ratios(self, reference: Cell) -> list[float]:
        return list(self.ratios_by_round(reference).values())


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


def measure_once(
    endpoint: Endpoint,
    backend: Endpoint,
    *,
    size: str,
    connections: int,
    duration_s: int,
    round_index: int,
) -> Sample:
    """One wrk run, reading CPU time of proxy, backend and everyone else around it."""
    assert backend.child is not None, "the backend is a process we started"
    url = endpoint.url(f"/{size}")
    proxy = endpoint.child
    proxy_before = cpu_seconds(proxy.pid) if proxy is not None else None
    backend_before = cpu_seconds(backend.child.pid)
    foreign_before = foreign_cpu_seconds()
    steal_before = steal_seconds(MEASURED_CPUS)
    started = time.monotonic()
    result = wrk.run(url, connections=connections, duration_s=duration_s, cpu=LOAD_CPU)
    window_s = time.monotonic() - started
    steal_s = steal_since(steal_before)
    foreign_cpu_s = foreign_cpu_seconds() - foreign_before
    backend_cpu_s = cpu_seconds(backend.child.pid) - backend_before
    proxy_cpu_s = (
        cpu_seconds(proxy.pid) - proxy_before
        if proxy is not None and proxy_before is not None
        else None
    )
    endpoint.ensure_alive()
    backend.ensure_alive()
    return Sample(
        result=result,
        round=round_index,
        proxy_cpu_s=proxy_cpu_s,
        backend_cpu_s=backend_cpu_s,
        foreign_cpu_s=foreign_cpu_s,
        window_s=window_s,
        steal_s=steal_s,
    )


def _log_sample(log: Log, name: str, size: str, connections: int, rnd: str, s: Sample) -> None:
    result, cpu = s.result, s.proxy_cpu_us_per_request
    log(
        f"  {name:<14} {size:>5} c={connections:<3} round {rnd}: "
        f"{result.requests_per_s:>10.0f} req/s  p50 {result.p50_us:>8.0f}us  "
        f"p99 {result.p99_us:>8.0f}us  cpu "
        + (f"{cpu:.1f}us/req" if cpu is not None else "-")
        + (f"  errors {result.errors}" if result.errors else "")
        + (
            f"  (other processes: {s.foreign_cpu_percent:.0f}% CPU)"
            if s.foreign_cpu_percent >= FOREIGN_CPU_WARN_PERCENT
            else ""
        )
        + (
            f"  (steal: {s.steal_percent:.0f}%, round left out)"
            if s.steal_percent >= STEAL_SPOIL_PERCENT
            else ""
        )
    )


def rotation(keys: Sequence[str], round_index: int) -> list[str]:
    """The run order of one round: the list rotated by the round's index."""
    if not keys:
        return []
    k = round_index % len(keys)
    return [*keys[k:], *keys[:k]]


def _fail(outcome: Outcome, exc: TargetError | wrk.WrkError, log: Log) -> None:
    outcome.status, outcome.note = "failed", str(exc)
    outcome.log_tail = exc.log_tail if isinstance(exc, TargetError) else ""
    log(f"[{outcome.target.label}] FAILED: {outcome.note}")
    if outcome.log_tail:
        log("  " + outcome.log_tail.replace("\n", "\n  "))


def _start_all(
    stack: ExitStack,
    outcomes: Sequence[Outcome],
    backend: Endpoint,
    plan: Plan,
    workdir: Path,
    log: Log,
) -> dict[str, Endpoint]:
    """Start every target (each stays up until the stack closes) and check its answers."""
    endpoints: dict[str, Endpoint] = {}
    for outcome in outcomes:
        target = outcome.target
        missing = target.missing_tools()
        if missing:
            outcome.status = "skipped"
            outcome.note = f"{', '.join(missing)} not installed; install with `{INSTALL_HINT}`"
            log(f"[{target.label}] skipped: {outcome.note}")
            continue
        log(f"[{target.label}] starting")
        try:
            endpoint = stack.enter_context(target.start(workdir, backend.port))
            for size in plan.sizes:
                check_response(endpoint, size)
        except TargetError as exc:
            _fail(outcome, exc, log)
            continue
        endpoints[target.key] = endpoint
    return endpoints


def run_all(
    targets: Sequence[Target],
    backend: Endpoint,
    plan: Plan,
    workdir: Path,
    log: Log = log_stderr,
) -> list[Outcome]:
    """Paired rounds: all targets up at once; each round runs wrk once on each, rotating.

    Idle targets cost nothing measurable (a health probe a second), so one proxy is under
    load at a time and has CPU 0 to itself. A target that fails stops being measured; the
    others go on.
    """
    outcomes = [Outcome(target=target) for target in targets]
    by_key = {o.target.key: o for o in outcomes}
    with ExitStack() as stack:
        endpoints = _start_all(stack, outcomes, backend, plan, workdir, log)
        for size, connections in plan.cells():
            samples: dict[str, list[Sample]] = {key: [] for key in endpoints}
            live = [key for key in endpoints if by_key[key].status == "ok"]
            log(f"-- {size} c={connections}: {plan.runs} round(s) over {', '.join(live)}")
            warmup = plan.warmup_s
            if warmup > 0:
                for key in live:
                    url = endpoints[key].url(f"/{size}")
                    try:
                        wrk.run(
                            url, connections=connections, duration_s=plan.warmup_s, cpu=LOAD_CPU
                        )
                    except wrk.WrkError as exc:
                        _fail(by_key[key], exc, log)
            for round_index in range(plan.runs):
                for key in rotation(live, round_index):
                    if by_key[key].status != "ok":
                        continue
                    try:
                        sample = measure_once(
                            endpoints[key],
                            backend,
                            size=size,
                            connections=connections,
                            duration_s=plan.duration_s,
                            round_index=round_index,
                        )
                    except (TargetError, wrk.WrkError) as exc:
                        _fail(by_key[key], exc, log)
                        continue
                    samples[key].append(sample)
                    rnd = f"{round_index + 1}/{plan.runs}"
                    _log_sample(log, endpoints[key].name, size, connections, rnd, sample)
            for key, taken in samples.items():
                if taken:
                    by_key[key].cells.append(
                        Cell(
                            target=endpoints[key].name,
                            size=size,
                            connections=connections,
                            samples=tuple(taken),
                        )
                    )
    return outcomes
