"""Parser and report checks that need no load: `python -m pytest bench/test_wrk.py`."""

from __future__ import annotations

import pytest

from bench import report, targets, throughput, wrk

NON_2XX = """\
Running 1s test @ http://127.0.0.1:54231/nope
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.42ms   12.44ms  82.78ms   93.61%
    Req/Sec    23.37k     9.53k   31.18k    75.00%
  Latency Distribution
     50%   54.00us
     75%   97.00us
     90%    4.30ms
     99%   71.08ms
  9280 requests in 1.01s, 2.73MB read
  Non-2xx or 3xx responses: 9280
Requests/sec:   9232.34
Transfer/sec:      2.71MB
"""

SOCKET_ERRORS = """\
Running 4s test @ http://127.0.0.1:8080/small
  1 threads and 256 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20s   300.00ms   2.00s    70.00%
    Req/Sec     1.00k   100.00     1.20k    70.00%
  Latency Distribution
     50%    1.10s
     75%    1.50s
     90%    1.90s
     99%    1.01m
  4000 requests in 4.00s, 400.00KB read
  Socket errors: connect 0, read 12, write 3, timeout 250
Requests/sec:   1000.00
Transfer/sec:    100.00KB
"""


def test_parse_units_and_non_2xx() -> None:
    result = wrk.parse(NON_2XX)
    assert result.requests == 9280
    assert result.duration_s == pytest.approx(1.01)
    assert result.requests_per_s == pytest.approx(9232.34)
    assert result.p50_us == pytest.approx(54.0)
    assert result.p90_us == pytest.approx(4300.0)
    assert result.p99_us == pytest.approx(71080.0)
    assert result.non_2xx_3xx == 9280
    assert result.socket_errors == wrk.SocketErrors()


def test_parse_seconds_minutes_and_socket_errors() -> None:
    result = wrk.parse(SOCKET_ERRORS)
    assert result.p50_us == pytest.approx(1.1e6)
    assert result.p99_us == pytest.approx(60.6e6)
    assert result.socket_errors == wrk.SocketErrors(read=12, write=3, timeout=250)
    assert result.errors == 265


def test_parse_rejects_output_without_latency_distribution() -> None:
    without = NON_2XX.replace("  Latency Distribution\n", "").replace("     50%   54.00us\n", "")
    with pytest.raises(wrk.WrkError, match="percentiles"):
        wrk.parse(without)


def test_report_shows_ratio_added_latency_and_failed_target() -> None:
    plan = throughput.Plan(sizes=("small",), duration_s=1, runs=1, warmup_s=0)
    by_key = {t.key: t for t in targets.TARGETS}

    def cell(target: str, connections: int, rps: float, p50_us: float) -> throughput.Cell:
        text = NON_2XX.replace("9232.34", str(rps)).replace("54.00us", f"{p50_us}us")
        result = wrk.parse(text.replace("  Non-2xx or 3xx responses: 9280\n", ""))
        sample = throughput.Sample(
            result=result, proxy_cpu_s=0.5, backend_cpu_s=0.2, foreign_cpu_s=0.0, window_s=1.0
        )
        return throughput.Cell(
            target=target, size="small", connections=connections, samples=(sample,)
        )

    nginx = throughput.Outcome(
        target=by_key["nginx"],
        cells=[cell("nginx", 64, 1000.0, 500.0), cell("nginx", 1, 100.0, 130.0)],
    )
    direct = throughput.Outcome(target=by_key["direct"], cells=[cell("direct", 1, 200.0, 30.0)])
    router = throughput.Outcome(
        target=by_key["router"], status="failed", note="exited with code 1", log_tail="boom"
    )
    text = report.render_markdown(
        report.Report(
            command="python bench/run.py",
            started_at="t0",
            finished_at="t1",
            machine={k: "?" for k in ("nproc", "kernel", "python", "cpu", "wrk", "nginx")}
            | {"haproxy": "?", "loadavg_start": "0", "pinning": "?"},
            plan=plan,
            notes=(),
            outcomes=(direct, router, nginx),
        )
    )
    assert "| nginx | small | 1,000 | 500us | 71.08ms | 53.9 | 50% | 1.00x | 0 |" in text
    assert "| nginx | 100 | 130us | 71.08ms | 100us |" in text
    assert "**region-router**: failed: exited with code 1" in text
    assert "boom" in text
