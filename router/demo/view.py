"""What ``region-router demo`` prints: the live table, the per-second status line, the summary.

Pure functions of plain data (``Frame``), so the layout is tested without a terminal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.state.snapshot import RegionState

BAR_WIDTH = 20
STATE_COLOURS = {
    RegionState.HEALTHY: "32",
    RegionState.RECOVERING: "36",
    RegionState.EJECTED: "33",
    RegionState.DRAINING: "33",
    RegionState.UNHEALTHY: "31",
    RegionState.FAILED_OVER: "35",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One region as the table shows it."""

    id: str
    state: RegionState
    share: float  # of the answers clients got in the window
    rps: float
    p50_ms: float | None  # client-observed, in the window
    estimate_ms: float  # the router's latency estimate (peak EWMA)
    upstream_errors: int  # failed attempts the router saw at this region, since the start
    simulated: str
    down: bool  # the demo has taken it down


@dataclass(frozen=True, slots=True, kw_only=True)
class Totals:
    rps: float
    ok: int
    failed: int
    retries: int

    def line(self) -> str:
        done = self.ok + self.failed
        ok_pct = 100.0 * self.ok / done if done else 100.0
        return (
            f"{self.rps:.0f} req/s  ok {ok_pct:.1f}% ({self.ok}/{done})  "
            f"failed {self.failed}  router retries {self.retries}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    t_s: float
    rows: Sequence[Row]
    totals: Totals
    next_step: str | None  # "t=40s bring us-east-1 back"
    events: Sequence[str]


@dataclass(slots=True)
class Outage:
    """One scripted outage and what the router made of it (seconds since the start)."""

    region: str
    down_at: float
    out_at: float | None = None  # first time the router had it out of rotation
    out_state: str = ""
    back_at: float | None = None
    in_at: float | None = None  # first time it was eligible again after coming back
    in_state: str = ""

    def line(self) -> str:
        text = f"summary: {self.region} went down at t={self.down_at:.1f}s"
        if self.out_at is not None:
            text += f", out of rotation at t={self.out_at:.1f}s ({self.out_state})"
        if self.back_at is not None:
            text += f", came back at t={self.back_at:.1f}s"
        if self.in_at is not None:
            text += f", in rotation again at t={self.in_at:.1f}s ({self.in_state})"
        return text


def status_line(frame: Frame) -> str:
    """The non-interactive mode's line per second."""
    parts = []
    for row in frame.rows:
        latency = f" {row.p50_ms:.0f}ms" if row.p50_ms is not None else ""
        parts.append(f"{row.id} {row.state} {row.share:.0%}{latency}")
    return f"t={frame.t_s:.0f}s  {frame.totals.line()}  | " + " | ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class TableStyle:
    colour: bool = False
    bar_chars: tuple[str, str] = ("#", ".")


def table(frame: Frame, header: Sequence[str], style: TableStyle, *, window_s: float) -> list[str]:
    """The live view: header lines, one row per region, totals, next step, recent events."""
    full, empty = style.bar_chars
    lines = [
        *header,
        "",
        f"{'REGION':<12} {'STATE':<11} {f'TRAFFIC (last {window_s:g} s)':<26} {'REQ/S':>5} "
        f"{'P50 MS':>6} {'EST MS':>6} {'UPSTR ERR':>9}  SIMULATED",
    ]
    for row in frame.rows:
        filled = round(row.share * BAR_WIDTH)
        bar = full * filled + empty * (BAR_WIDTH - filled)
        state = f"{row.state.value:<11}"
        colour = STATE_COLOURS.get(row.state)
        if style.colour and colour:
            state = f"\x1b[{colour}m{state}\x1b[0m"
        p50 = f"{row.p50_ms:.0f}" if row.p50_ms is not None else "-"
        down = "  [DOWN]" if row.down else ""
        lines.append(
            f"{row.id:<12} {state} {bar} {row.share:>4.0%}  {row.rps:>5.0f} {p50:>6} "
            f"{row.estimate_ms:>6.0f} {row.upstream_errors:>9}  {row.simulated}{down}"
        )
    lines += ["", f"clients: {frame.totals.line()}", ""]
    if frame.next_step is not None:
        lines.append(f"next: {frame.next_step}")
    lines.append("events:")
    lines += [f"  {line}" for line in frame.events]
    lines += ["", "Ctrl-C to stop"]
    return lines


def summary(
    t_s: float, ok: int, failed: int, failures: dict[str, int], outages: Sequence[Outage]
) -> list[str]:
    done = ok + failed
    ok_pct = 100.0 * ok / done if done else 0.0
    detail = ", ".join(f"{kind}: {n}" for kind, n in sorted(failures.items()))
    first = f"summary: {done} requests in {t_s:.1f}s, {ok} ok ({ok_pct:.1f}%), {failed} failed" + (
        f" ({detail})" if detail else ""
    )
    return [first, *(o.line() for o in outages)]
