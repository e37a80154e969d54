"""Parser and report checks that need no load: `python -m pytest bench/test_wrk.py`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import report, targets, throughput, wrk
from router.config.loader import load_config, parse_config

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


def test_rotation_gives_every_target_every_position() -> None:
    keys = ["direct", "defaults", "bare", "nginx"]
    orders = [throughput.rotation(keys, r) for r in range(4)]
    assert orders[0] == keys and orders[1] == ["defaults", "bare", "nginx", "direct"]
    assert {order[0] for order in orders} == set(keys)
    assert throughput.rotation([], 3) == []


def _sample(rps: float, p50_us: float, round_index: int, steal_s: float = 0.0) -> throughput.Sample:
    text = NON_2XX.replace("9232.34", str(rps)).replace("54.00us", f"{p50_us}us")
    result = wrk.parse(text.replace("  Non-2xx or 3xx responses: 9280\n", ""))
    return throughput.Sample(
        result=result,
        round=round_index,
        proxy_cpu_s=0.5,
        backend_cpu_s=0.2,
        foreign_cpu_s=0.0,
        window_s=1.0,
        steal_s=steal_s,
    )


def _cell(
    target: str, connections: int, runs: list[tuple[float, float]], steal_s: float = 0.0
) -> throughput.Cell:
    samples = tuple(_sample(rps, p50, r, steal_s) for r, (rps, p50) in enumerate(runs))
    return throughput.Cell(target=target, size="small", connections=connections, samples=samples)


def _report(plan: throughput.Plan, outcomes: tuple[throughput.Outcome, ...]) -> report.Report:
    return report.Report(
        command="python bench/run.py",
        started_at="t0",
        finished_at="t1",
        machine={k: "?" for k in ("nproc", "kernel", "python", "cpu", "wrk", "nginx")}
        | {"haproxy": "?", "loadavg_start": "0", "pinning": "?"},
        plan=plan,
        notes=(),
        outcomes=outcomes,
    )


def test_report_pairs_rounds_and_shows_bars_added_latency_and_failed_target() -> None:
    plan = throughput.Plan(sizes=("small",), duration_s=1, runs=3, warmup_s=0)
    by_key = {t.key: t for t in targets.TARGETS}
    # The machine drifts: nginx's rate halves over the rounds and so does defaults'. The
    # per-round ratios stay at 0.5-0.6 while a ratio of medians would read differently.
    nginx = throughput.Outcome(
        target=by_key["nginx"],
        cells=[
            _cell("nginx", 64, [(1000.0, 500.0), (800.0, 500.0), (500.0, 500.0)]),
            _cell("nginx", 1, [(100.0, 130.0)]),
        ],
    )
    defaults = throughput.Outcome(
        target=by_key["defaults"],
        cells=[
            _cell("defaults", 64, [(500.0, 900.0), (480.0, 900.0), (300.0, 900.0)]),
            _cell("defaults", 256, [(450.0, 900.0), (450.0, 900.0), (450.0, 900.0)]),
            _cell("defaults", 1, [(90.0, 150.0)]),
        ],
    )
    direct = throughput.Outcome(
        target=by_key["direct"], cells=[_cell("direct", 1, [(200.0, 30.0)])]
    )
    bare = throughput.Outcome(
        target=by_key["bare"], status="failed", note="exited with code 1", log_tail="boom"
    )
    report_ = _report(plan, (direct, defaults, bare, nginx))
    text = report.render_markdown(report_)
    assert report.paired_ratio(report_, "defaults", "small", 64) == pytest.approx(0.6)
    assert (
        "| region-router defaults | small | 480 | 0.60x (0.50-0.60) | 53.9 | 50% | 900us |" in text
    )
    assert "| nginx | small | 800 | 1.00x |" in text
    assert "| defaults small vs nginx | >= 0.50 | 0.60 | yes |" in text
    assert "| defaults c=256 / c=64 | >= 0.90, 0 errors | 0.94, 0 errors | yes |" in text
    assert "| defaults c=1 p50 minus nginx's | <= 0.03 ms | +0.020 ms | yes |" in text
    assert "| region-router defaults | 90 | 150us | 71.08ms | 120us | 20us |" in text
    assert "**region-router bare**: failed: exited with code 1" in text
    assert "boom" in text
    doc = report.to_json(report_)
    cells = doc["targets"][1]["cells"]
    assert cells[0]["vs_nginx_per_round"] == pytest.approx([0.5, 0.6, 0.6])


def test_defaults_is_the_repo_config_on_three_loopback_regions_and_bare_is_minimal(
    tmp_path: Path,
) -> None:
    listen = {"proxy": "127.0.0.1:18080", "admin": "127.0.0.1:19901"}
    defaults = parse_config(targets.defaults_config(8000, listen, tmp_path), {})
    repo = load_config(str(targets.REPO_ROOT / "config.yaml"), {})
    assert defaults.strategy == repo.strategy == "latency"
    assert defaults.access_log is True and defaults.health_check == repo.health_check
    assert defaults.routes == repo.routes and defaults.retries == repo.retries
    hosts = [(r.endpoint.host, r.endpoint.port) for r in defaults.regions]
    assert hosts == [("127.0.0.1", 8000), ("127.0.0.2", 8000), ("127.0.0.3", 8000)]
    assert str(defaults.listen.proxy) == listen["proxy"]
    bare = parse_config(targets.bare_config(8000, listen, tmp_path), {})
    assert bare.strategy == "weighted" and bare.access_log is False
    assert len(bare.regions) == 1


def test_a_round_the_hypervisor_stalled_is_left_out_of_the_paired_ratios() -> None:
    plan = throughput.Plan(sizes=("small",), duration_s=1, runs=4, warmup_s=0)
    by_key = {t.key: t for t in targets.TARGETS}
    nginx_samples = [_sample(1000.0, 500.0, r) for r in range(4)]
    # Round 2: the VM stalled during the router's run (steal 40% of it): 0.1 instead of 0.5.
    router_samples = [
        _sample(rps, 900.0, r, steal_s=0.4 if r == 2 else 0.01)
        for r, rps in enumerate([500.0, 500.0, 100.0, 500.0])
    ]
    cells = {
        "nginx": throughput.Cell(
            target="nginx", size="small", connections=64, samples=tuple(nginx_samples)
        ),
        "defaults": throughput.Cell(
            target="defaults", size="small", connections=64, samples=tuple(router_samples)
        ),
    }
    report_ = _report(
        plan,
        tuple(throughput.Outcome(target=by_key[key], cells=[cell]) for key, cell in cells.items()),
    )
    assert report.spoiled_rounds(report_, "small", 64) == {2}
    assert report.paired_ratio(report_, "defaults", "small", 64) == pytest.approx(0.5)
    text = report.render_markdown(report_)
    assert "0.50x (0.50-0.50) [3 of 4 rounds]" in text
    assert "at most 40% of a run" in text and "small c=64: rounds [3]" in text
    runs = report.to_json(report_)["targets"][1]["cells"][0]["runs"]
    assert [r["steal_s"] for r in runs] == pytest.approx([0.01, 0.01, 0.4, 0.01])


def test_with_fewer_than_two_clean_rounds_every_round_counts() -> None:
    nginx = throughput.Cell(
        target="nginx",
        size="small",
        connections=64,
        samples=tuple(_sample(1000.0, 500.0, r) for r in range(2)),
    )
    router = throughput.Cell(
        target="defaults",
        size="small",
        connections=64,
        samples=(_sample(500.0, 900.0, 0, steal_s=0.2), _sample(300.0, 900.0, 1)),
    )
    ratios, left_out = report.clean_ratios(router, nginx, frozenset({0}))
    assert (ratios, left_out) == (pytest.approx([0.5, 0.3]), 0)


def test_c1_and_c256_figures_come_from_the_rounds_the_hypervisor_did_not_stall() -> None:
    plan = throughput.Plan(sizes=("small",), duration_s=1, runs=3, warmup_s=0)
    by_key = {t.key: t for t in targets.TARGETS}

    def cell(
        target: str, connections: int, runs: list[tuple[float, float, float]]
    ) -> throughput.Cell:
        samples = tuple(_sample(rps, p50, r, steal) for r, (rps, p50, steal) in enumerate(runs))
        return throughput.Cell(
            target=target, size="small", connections=connections, samples=samples
        )

    nginx = throughput.Outcome(
        target=by_key["nginx"],
        cells=[
            cell("nginx", 64, [(1000.0, 500.0, 0.0)] * 3),
            cell("nginx", 1, [(100.0, 200.0, 0.0), (100.0, 210.0, 0.0), (100.0, 200.0, 0.0)]),
        ],
    )
    # Round 3 (index 2) stalled the router's c=1 and c=256 runs: p50 900 us, 50 req/s.
    defaults = throughput.Outcome(
        target=by_key["defaults"],
        cells=[
            cell("defaults", 64, [(500.0, 900.0, 0.0)] * 3),
            cell("defaults", 256, [(450.0, 900.0, 0.0), (460.0, 900.0, 0.0), (50.0, 900.0, 0.4)]),
            cell("defaults", 1, [(90.0, 150.0, 0.0), (90.0, 170.0, 0.0), (20.0, 900.0, 0.4)]),
        ],
    )
    text = report.render_markdown(_report(plan, (defaults, nginx)))
    # c=1: the per-round differences -50 and -40 us; the stalled +700 is left out.
    assert "| defaults c=1 p50 minus nginx's | <= 0.03 ms | -0.045 ms | yes |" in text
    assert "| -45us [2 of 3 rounds] |" in text
    # c=256: the median of the clean rounds (455) over c=64's (500), not 450/500.
    assert "| defaults c=256 / c=64 | >= 0.90, 0 errors | 0.91, 0 errors | yes |" in text
