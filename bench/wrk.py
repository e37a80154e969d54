"""Run wrk pinned to the load CPU and parse its report: throughput, percentiles, errors."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from bench.process import pinned

WRK_GRACE_S = 60  # on top of the run's own duration, before we give up on wrk

_TIME_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_TIME = r"([\d.]+)\s*(us|ms|s|m|h)"
_RE_REQUESTS_PER_S = re.compile(r"^\s*Requests/sec:\s+([\d.]+)", re.MULTILINE)
_RE_TOTAL = re.compile(rf"^\s*(\d+) requests in {_TIME},", re.MULTILINE)
_RE_PERCENTILE = re.compile(rf"^\s*(\d+(?:\.\d+)?)%\s+{_TIME}\s*$", re.MULTILINE)
_RE_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.MULTILINE)
_RE_SOCKET_ERRORS = re.compile(
    r"^\s*Socket errors:\s*connect (\d+),\s*read (\d+),\s*write (\d+),\s*timeout (\d+)",
    re.MULTILINE,
)


class WrkError(Exception):
    """wrk failed, timed out, or printed something this parser does not understand."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SocketErrors:
    connect: int = 0
    read: int = 0
    write: int = 0
    timeout: int = 0

    @property
    def total(self) -> int:
        return self.connect + self.read + self.write + self.timeout


@dataclass(frozen=True, slots=True, kw_only=True)
class WrkResult:
    """One wrk run, every latency in microseconds."""

    requests: int
    duration_s: float
    requests_per_s: float
    p50_us: float
    p75_us: float
    p90_us: float
    p99_us: float
    non_2xx_3xx: int
    socket_errors: SocketErrors

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + self.socket_errors.total


def _to_us(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS_US[unit]


def parse(output: str) -> WrkResult:
    """Parse `wrk --latency` stdout. Lines wrk omits when zero (errors) default to zero."""
    rps = _RE_REQUESTS_PER_S.search(output)
    total = _RE_TOTAL.search(output)
    if rps is None or total is None:
        raise WrkError(f"no 'Requests/sec' or 'N requests in' line in wrk output:\n{output}")
    percentiles = {
        float(match[1]): _to_us(match[2], match[3]) for match in _RE_PERCENTILE.finditer(output)
    }
    missing = [p for p in (50.0, 75.0, 90.0, 99.0) if p not in percentiles]
    if missing:
        raise WrkError(f"no latency percentiles {missing} in wrk output (was --latency given?)")
    non_2xx = _RE_NON_2XX.search(output)
    sock = _RE_SOCKET_ERRORS.search(output)
    socket_errors = (
        SocketErrors(
            connect=int(sock[1]), read=int(sock[2]), write=int(sock[3]), timeout=int(sock[4])
        )
        if sock
        else SocketErrors()
    )
    return WrkResult(
        requests=int(total[1]),
        duration_s=_to_us(total[2], total[3]) / 1e6,
        requests_per_s=float(rps[1]),
        p50_us=percentiles[50.0],
        p75_us=percentiles[75.0],
        p90_us=percentiles[90.0],
        p99_us=percentiles[99.0],
        non_2xx_3xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=socket_errors,
    )


def run(
    url: str,
    *,
    connections: int,
    duration_s: int,
    cpu: int | None,
    headers: tuple[str, ...] = (),
) -> WrkResult:
    """`wrk -t1 -c<connections> -d<duration>s --latency [-H h]... <url>`, pinned to `cpu`."""
    extra = [arg for header in headers for arg in ("-H", header)]
    argv = pinned(
        cpu, ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency", *extra, url]
    )
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=duration_s + WRK_GRACE_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {duration_s + WRK_GRACE_S}s: {argv}") from exc
    if done.returncode != 0:
        raise WrkError(f"wrk exited {done.returncode}: {(done.stderr + done.stdout).strip()}")
    return parse(done.stdout)
