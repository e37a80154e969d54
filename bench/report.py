"""Render outcomes as a markdown report and a JSON document, and write both atomically."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bench.throughput import (
    BASE_CONNECTIONS,
    CONCURRENCY_SIZE,
    FOREIGN_CPU_WARN_PERCENT,
    HIGH_CONNECTIONS,
    SINGLE_CONNECTION,
    STEAL_SPOIL_PERCENT,
    Cell,
    Outcome,
    Plan,
)

T = TypeVar("T")

REFERENCE = "nginx"  # the "vs nginx" column divides by this target's req/s
MIN_CLEAN_ROUNDS = 2  # fewer rounds without a stall than this: every round counts


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    command: str
    started_at: str
    finished_at: str
    machine: dict[str, str]
    plan: Plan
    notes: tuple[str, ...]
    outcomes: tuple[Outcome, ...]

    def outcome(self, key: str) -> Outcome | None:
        return next((o for o in self.outcomes if o.target.key == key), None)


def fmt_latency(us: float | None) -> str:
    if us is None:
        return "-"
    if us < 1e3:
        return f"{us:.0f}us"
    if us < 1e6:
        return f"{us / 1e3:.2f}ms"
    return f"{us / 1e6:.2f}s"


def fmt_rps(rps: float | None) -> str:
    return "-" if rps is None else f"{rps:,.0f}"


def fmt_cpu(us: float | None) -> str:
    return "-" if us is None else f"{us:.1f}"


def fmt_percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def fmt_ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.2f}x"


def fmt_errors(cell: Cell) -> str:
    if not cell.non_2xx_3xx and not cell.socket_errors:
        return "0"
    return f"{cell.non_2xx_3xx} non-2xx/3xx, {cell.socket_errors} socket"


def _rps(outcome: Outcome | None, size: str, connections: int) -> float | None:
    cell = outcome.cell(size, connections) if outcome is not None else None
    return cell.requests_per_s if cell is not None else None


def _table(header: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> list[str]:
    """`align` has one letter per column: l or r."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return ["| " + " | ".join(row) + " |" for row in (header, rule, *rows)]


def _interference(report: Report) -> list[str]:
    """One line on how much CPU other processes used during the measured runs."""
    worst: tuple[float, str] | None = None
    for outcome in report.outcomes:
        for cell in outcome.cells:
            where = f"{outcome.target.label} {cell.size} c={cell.connections}"
            if worst is None or cell.max_foreign_cpu_percent > worst[0]:
                worst = (cell.max_foreign_cpu_percent, where)
    if worst is None:
        return []
    line = f"- other processes used at most {worst[0]:.0f}% of a CPU during a measured run"
    if worst[0] < FOREIGN_CPU_WARN_PERCENT:
        lines = [line + " (quiet machine)"]
    else:
        lines = [line + f" ({worst[1]}): **the machine was shared; treat these figures as noisy**"]
    return lines + _steal(report)


def _steal(report: Report) -> list[str]:
    """One line on the hypervisor's stalls (steal time) and the rounds they cost."""
    worst = 0.0
    left_out: list[str] = []
    cells = {(c.size, c.connections) for o in report.outcomes for c in o.cells}
    for outcome in report.outcomes:
        for cell in outcome.cells:
            worst = max(worst, cell.max_steal_percent)
    for size, connections in sorted(cells):
        spoiled = spoiled_rounds(report, size, connections)
        if spoiled:
            left_out.append(f"{size} c={connections}: rounds {sorted(r + 1 for r in spoiled)}")
    line = (
        f"- steal (the hypervisor running another guest on the proxy's or the load's CPU): "
        f"at most {worst:.0f}% of a run"
    )
    if not left_out:
        return [line]
    return [
        line + f"; rounds with {STEAL_SPOIL_PERCENT:.0f}% or more are left out of the ratios "
        f"(while {MIN_CLEAN_ROUNDS} or more remain): " + "; ".join(left_out)
    ]


def spoiled_rounds(report: Report, size: str, connections: int) -> frozenset[int]:
    """Rounds of a cell in which the hypervisor stalled any target's run (steal time)."""
    rounds: set[int] = set()
    for outcome in report.outcomes:
        cell = outcome.cell(size, connections)
        if cell is not None:
            rounds |= cell.spoiled_rounds()
    return frozenset(rounds)


def without_stalls(per_round: dict[int, T], spoiled: frozenset[int]) -> tuple[list[T], int]:
    """The values of the rounds the hypervisor did not stall, and how many were left out;
    every round's (none left out) when fewer than ``MIN_CLEAN_ROUNDS`` would remain."""
    clean = [value for r, value in per_round.items() if r not in spoiled]
    if len(clean) < MIN_CLEAN_ROUNDS:
        return list(per_round.values()), 0
    return clean, len(per_round) - len(clean)


def _rounds_note(kept: int, left_out: int) -> str:
    return f" [{kept} of {kept + left_out} rounds]" if left_out else ""


def clean_ratios(cell: Cell, reference: Cell, spoiled: frozenset[int]) -> tuple[list[float], int]:
    """The per-round req/s ratios to the reference, without the stalled rounds."""
    return without_stalls(cell.ratios_by_round(reference), spoiled)


def fmt_paired(cell: Cell, reference: Cell | None, spoiled: frozenset[int] = frozenset()) -> str:
    """Median of the per-round ratios to the reference, with their min-max."""
    if reference is None:
        return "-"
    ratios, left_out = clean_ratios(cell, reference, spoiled)
    if not ratios:
        return "-"
    med = statistics.median(ratios)
    if cell is reference:
        return "1.00x"
    text = f"{med:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
    return text + _rounds_note(len(ratios), left_out)


def clean_rps(cell: Cell, spoiled: frozenset[int]) -> float:
    """Median req/s over the rounds the hypervisor did not stall (the c=256/c=64 columns:
    the two cells ran at different times, so their rounds are not paired)."""
    rates, _ = without_stalls({s.round: s.result.requests_per_s for s in cell.samples}, spoiled)
    return statistics.median(rates)


def added_latencies(cell: Cell, than: Cell, spoiled: frozenset[int]) -> tuple[list[float], int]:
    """Per round, ``cell``'s p50 minus ``than``'s (the two ran in the same round), without
    the stalled rounds."""
    other = {s.round: s.result.p50_us for s in than.samples}
    every = {s.round: s.result.p50_us - other[s.round] for s in cell.samples if s.round in other}
    return without_stalls(every, spoiled)


def fmt_added(cell: Cell, than: Cell, spoiled: frozenset[int]) -> str:
    diffs, left_out = added_latencies(cell, than, spoiled)
    if not diffs:
        return "-"
    return fmt_latency(statistics.median(diffs)) + _rounds_note(len(diffs), left_out)


def paired_ratio(report: Report, key: str, size: str, connections: int) -> float | None:
    """Median per-round req/s ratio of target ``key`` to the reference, for one cell
    (rounds the hypervisor stalled left out)."""
    outcome, reference = report.outcome(key), report.outcome(REFERENCE)
    if outcome is None or reference is None:
        return None
    cell, ref = outcome.cell(size, connections), reference.cell(size, connections)
    if cell is None or ref is None:
        return None
    ratios, _ = clean_ratios(cell, ref, spoiled_rounds(report, size, connections))
    return statistics.median(ratios) if ratios else None


def _cell(report: Report, key: str, size: str, connections: int) -> Cell | None:
    outcome = report.outcome(key)
    return outcome.cell(size, connections) if outcome is not None else None


def _bars(report: Report) -> list[str]:
    """Issue 12's bars, each with what this run measured (only what it ran)."""
    rows: list[list[str]] = []

    def ratio_bar(key: str, size: str, bar: float) -> None:
        value = paired_ratio(report, key, size, BASE_CONNECTIONS)
        if value is not None:
            verdict = "yes" if value >= bar else "**no**"
            rows.append([f"{key} {size} vs nginx", f">= {bar:.2f}", f"{value:.2f}", verdict])

    for size, bar in (("small", 0.50), ("64k", 0.90), ("1m", 1.00)):
        ratio_bar("defaults", size, bar)
    ratio_bar("bare", "small", 0.60)
    for key in ("defaults", "bare"):
        base = _cell(report, key, CONCURRENCY_SIZE, BASE_CONNECTIONS)
        high = _cell(report, key, CONCURRENCY_SIZE, HIGH_CONNECTIONS)
        if base is not None and high is not None:
            value = clean_rps(
                high, spoiled_rounds(report, CONCURRENCY_SIZE, HIGH_CONNECTIONS)
            ) / clean_rps(base, spoiled_rounds(report, CONCURRENCY_SIZE, BASE_CONNECTIONS))
            errors = high.non_2xx_3xx + high.socket_errors
            ok = value >= 0.9 and errors == 0
            rows.append(
                [
                    f"{key} c=256 / c=64",
                    ">= 0.90, 0 errors",
                    f"{value:.2f}, {errors} errors",
                    "yes" if ok else "**no**",
                ]
            )
        single = _cell(report, key, CONCURRENCY_SIZE, SINGLE_CONNECTION)
        nginx_single = _cell(report, REFERENCE, CONCURRENCY_SIZE, SINGLE_CONNECTION)
        if single is not None and nginx_single is not None:
            diffs, _ = added_latencies(
                single, nginx_single, spoiled_rounds(report, CONCURRENCY_SIZE, SINGLE_CONNECTION)
            )
            extra_us = statistics.median(diffs)
            rows.append(
                [
                    f"{key} c=1 p50 minus nginx's",
                    "<= 0.03 ms",
                    f"{extra_us / 1000:+.3f} ms",
                    "yes" if extra_us <= 30 else "**no**",
                ]
            )
    if not rows:
        return []
    lines = ["", "## Issue 12 bars", ""]
    return lines + _table(["bar", "target", "measured", "met"], "lrrl", rows)


def render_markdown(report: Report) -> str:
    plan, machine = report.plan, report.machine
    lines = [
        "# region-router side-by-side benchmark (paired rounds)",
        "",
        f"- command: `{report.command}`",
        f"- run: {report.started_at} to {report.finished_at}, git {machine.get('git', '?')}",
        f"- machine: nproc {machine['nproc']}, kernel {machine['kernel']}, "
        f"Python {machine['python']}, CPU {machine['cpu']}",
        f"- tools: {machine['wrk']}; {machine['nginx']}; {machine['haproxy']}",
        f"- load average at start / end: {machine['loadavg_start']} / "
        f"{machine.get('loadavg_end', '?')}",
        f"- pinning: {machine['pinning']}",
        f"- method: every target up at once; per cell, {plan.runs} round(s), each running "
        f"`wrk -t1 -d{plan.duration_s}s --latency` once against every target in rotating order "
        f"(after a {plan.warmup_s} s warm-up each). **vs nginx** is the median of the per-round "
        "ratios (min-max in brackets); req/s, p50, p99, CPU are medians over rounds. CPU us/req "
        "is the proxy process tree's user+system time over requests completed; proxy CPU is "
        "that time over the run's wall time (100% = one CPU: the proxy is the bottleneck)",
    ]
    lines += [f"- note: {note}" for note in report.notes]
    lines += _interference(report)
    lines += _bars(report)

    reference = report.outcome(REFERENCE)
    rows = []
    for size in plan.sizes:
        ref_cell = reference.cell(size, BASE_CONNECTIONS) if reference else None
        for outcome in report.outcomes:
            cell = outcome.cell(size, BASE_CONNECTIONS)
            if cell is None:
                continue
            rows.append(
                [
                    outcome.target.label,
                    size,
                    fmt_rps(cell.requests_per_s),
                    fmt_paired(cell, ref_cell, spoiled_rounds(report, size, BASE_CONNECTIONS)),
                    fmt_cpu(cell.proxy_cpu_us_per_request),
                    fmt_percent(cell.proxy_cpu_percent),
                    fmt_latency(cell.p50_us),
                    fmt_latency(cell.p99_us),
                    fmt_errors(cell),
                ]
            )
    lines += ["", f"## Throughput and latency, c={BASE_CONNECTIONS}", ""]
    header = ["target", "size", "req/s", "vs nginx", "CPU us/req", "proxy CPU", "p50", "p99"]
    lines += _table([*header, "errors"], "llrrrrrrl", rows)

    high_rows, single_rows = [], []
    direct_single = _cell(report, "direct", CONCURRENCY_SIZE, SINGLE_CONNECTION)
    nginx_single = _cell(report, REFERENCE, CONCURRENCY_SIZE, SINGLE_CONNECTION)
    base_spoiled = spoiled_rounds(report, CONCURRENCY_SIZE, BASE_CONNECTIONS)
    high_spoiled = spoiled_rounds(report, CONCURRENCY_SIZE, HIGH_CONNECTIONS)
    single_spoiled = spoiled_rounds(report, CONCURRENCY_SIZE, SINGLE_CONNECTION)
    for outcome in report.outcomes:
        base = outcome.cell(CONCURRENCY_SIZE, BASE_CONNECTIONS)
        high = outcome.cell(CONCURRENCY_SIZE, HIGH_CONNECTIONS)
        if high is not None:
            base_rps = clean_rps(base, base_spoiled) if base else None
            high_rps = clean_rps(high, high_spoiled)
            high_rows.append(
                [
                    outcome.target.label,
                    fmt_rps(base_rps),
                    fmt_rps(high_rps),
                    fmt_ratio(high_rps, base_rps),
                    fmt_latency(high.p99_us),
                    str(high.non_2xx_3xx),
                    str(high.socket_errors),
                ]
            )
        single = outcome.cell(CONCURRENCY_SIZE, SINGLE_CONNECTION)
        if single is not None:

            def added(than: Cell | None, single: Cell = single) -> str:
                if than is None or than is single:
                    return "-"
                return fmt_added(single, than, single_spoiled)

            single_rows.append(
                [
                    outcome.target.label,
                    fmt_rps(single.requests_per_s),
                    fmt_latency(single.p50_us),
                    fmt_latency(single.p99_us),
                    added(direct_single) if outcome.target.key != "direct" else "-",
                    added(nginx_single),
                ]
            )
    if high_rows:
        lines += ["", f"## Concurrency: c={HIGH_CONNECTIONS} vs c={BASE_CONNECTIONS}, /small", ""]
        header = ["target", "req/s c=64", "req/s c=256", "c256/c64", "p99 c=256", "non-2xx/3xx"]
        lines += _table([*header, "socket errors"], "lrrrrrr", high_rows)
    if single_rows:
        lines += ["", f"## Added latency: c={SINGLE_CONNECTION}, /small", ""]
        header = ["target", "req/s", "p50", "p99", "p50 minus direct's", "p50 minus nginx's"]
        lines += _table(header, "lrrrrr", single_rows)

    problems = [o for o in report.outcomes if o.status != "ok"]
    if problems:
        lines += ["", "## Targets not (fully) measured", ""]
        for outcome in problems:
            lines.append(f"- **{outcome.target.label}**: {outcome.status}: {outcome.note}")
            if outcome.log_tail:
                lines += ["", "  ```", *("  " + ln for ln in outcome.log_tail.splitlines())]
                lines += ["  ```"]
    return "\n".join(lines) + "\n"


def _cell_json(cell: Cell, reference: Cell | None) -> dict[str, Any]:
    ratios = cell.round_ratios(reference) if reference is not None else []
    return {
        "vs_nginx_per_round": ratios,
        "size": cell.size,
        "connections": cell.connections,
        "median": {
            "requests_per_s": cell.requests_per_s,
            "p50_us": cell.p50_us,
            "p99_us": cell.p99_us,
            "proxy_cpu_us_per_request": cell.proxy_cpu_us_per_request,
            "backend_cpu_us_per_request": cell.backend_cpu_us_per_request,
            "proxy_cpu_percent": cell.proxy_cpu_percent,
        },
        "max_foreign_cpu_percent": cell.max_foreign_cpu_percent,
        "max_steal_percent": cell.max_steal_percent,
        "non_2xx_3xx_total": cell.non_2xx_3xx,
        "socket_errors_total": cell.socket_errors,
        "runs": [
            {
                "round": s.round,
                "requests": s.result.requests,
                "duration_s": s.result.duration_s,
                "requests_per_s": s.result.requests_per_s,
                "latency_us": {
                    "p50": s.result.p50_us,
                    "p75": s.result.p75_us,
                    "p90": s.result.p90_us,
                    "p99": s.result.p99_us,
                },
                "non_2xx_3xx": s.result.non_2xx_3xx,
                "socket_errors": {
                    "connect": s.result.socket_errors.connect,
                    "read": s.result.socket_errors.read,
                    "write": s.result.socket_errors.write,
                    "timeout": s.result.socket_errors.timeout,
                },
                "proxy_cpu_s": s.proxy_cpu_s,
                "backend_cpu_s": s.backend_cpu_s,
                "foreign_cpu_s": s.foreign_cpu_s,
                "cpu_window_s": s.window_s,
                "steal_s": s.steal_s,
            }
            for s in cell.samples
        ],
    }


def _reference_cell(report: Report, cell: Cell) -> Cell | None:
    return _cell(report, REFERENCE, cell.size, cell.connections)


def to_json(report: Report) -> dict[str, Any]:
    return {
        "command": report.command,
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "machine": report.machine,
        "plan": {
            "sizes": list(report.plan.sizes),
            "duration_s": report.plan.duration_s,
            "runs": report.plan.runs,
            "warmup_s": report.plan.warmup_s,
        },
        "notes": list(report.notes),
        "targets": [
            {
                "target": o.target.label,
                "status": o.status,
                "note": o.note,
                "log_tail": o.log_tail,
                "cells": [_cell_json(cell, _reference_cell(report, cell)) for cell in o.cells],
            }
            for o in report.outcomes
        ],
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write(report: Report, out_dir: Path, stem: str = "latest") -> tuple[Path, Path]:
    """Write `<stem>.md` and `<stem>.json` into `out_dir`; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    _write_atomic(md_path, render_markdown(report))
    _write_atomic(json_path, json.dumps(to_json(report), indent=2) + "\n")
    return md_path, json_path
