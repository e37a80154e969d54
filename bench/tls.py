"""HTTPS: region-router against nginx, paired and interleaved: `python bench/tls.py`.

Two measurements, each in alternating rounds (router, nginx, router, nginx, ...) so that the
VM's drift hits both alike; the ratio is taken per round and the median ratio reported:

- keep-alive: wrk over HTTPS, 64 connections, the 100-byte /small response;
- handshakes: wrk with `Connection: close`, so every request is a new TCP connection and a
  new TLS handshake (new handshakes per second; wrk resumes TLS 1.3 sessions, so most are
  resumptions, for both targets alike);
- plain: the same keep-alive load over plain HTTP to the same two processes, for reference.

Besides requests/s, each run reports the proxy process's CPU time per request, which a
busy machine distorts less than throughput.

Both terminate TLS with the same ECDSA P-256 certificate (made here with openssl; the key
lives only in the temp dir), TLS 1.2 and 1.3 allowed, and proxy to the same nginx backend
over plain HTTP keep-alive. Pinning as in bench/run.py: the proxy alone on CPU 0, wrk and
the backend on CPU 1; nginx is one process (`master_process off`), the router one event loop.
"""

from __future__ import annotations

import argparse
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import wrk
from bench.process import (
    Child,
    TargetError,
    cpu_seconds,
    free_ports,
    pinned,
    steal_seconds,
    steal_since,
)
from bench.report import without_stalls
from bench.targets import (
    LOAD_CPU,
    PROXY_CPU,
    PROXY_LOCATION,
    READY_TIMEOUT_S,
    REPO_ROOT,
    ROUTER_READY_TIMEOUT_S,
    Endpoint,
    _nginx_conf,
    _start_nginx,
    backend_upstream,
    nginx_backend,
)
from bench.throughput import STEAL_SPOIL_PERCENT

ROUTER_CONFIG = """\
listen: {{proxy: "127.0.0.1:{proxy_port}", admin: "127.0.0.1:{admin_port}",
          https: "127.0.0.1:{https_port}"}}
tls: {{certificates: [{{cert: "{cert}", key: "{key}"}}]}}
strategy: round_robin
access_log: false
state_dir: {state_dir}
reload: {{watch: false}}
health_check: {{path: /health, interval: 5s, timeout: 2s}}
regions:
  - {{id: bench-1, endpoint: "http://127.0.0.1:{backend_port}"}}
"""


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for localhost."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def wait_https(child: Child, port: int, timeout_s: float) -> None:
    """Poll an HTTPS GET /health until it answers 200 (certificate not verified)."""
    import http.client
    import time

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        child.ensure_alive()
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=1.0, context=ctx)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise TargetError(f"{child.name}: no HTTPS 200 within {timeout_s:g}s", child.log_tail())


@contextmanager
def router_https(
    workdir: Path,
    backend_port: int,
    cert: Path,
    key: Path,
    name: str = "region-router",
    root: Path = REPO_ROOT,
) -> Iterator[Endpoint]:
    """The router of the tree at ``root`` (this checkout, or ``--baseline``'s)."""
    prefix = workdir / name
    (prefix / "state").mkdir(parents=True)
    proxy_port, admin_port, https_port = free_ports(3)
    conf = prefix / "config.yaml"
    conf.write_text(
        ROUTER_CONFIG.format(
            proxy_port=proxy_port,
            admin_port=admin_port,
            https_port=https_port,
            cert=cert,
            key=key,
            state_dir=prefix / "state",
            backend_port=backend_port,
        )
    )
    pythonpath = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "router", "run", "-c", str(conf)]
    child = Child(name, pinned(PROXY_CPU, argv), prefix / "router.log", cwd=root, env=env)
    try:
        wait_https(child, https_port, ROUTER_READY_TIMEOUT_S)
        PLAIN_PORTS[name] = proxy_port
        yield Endpoint(name, https_port, child)
    finally:
        child.stop()


@contextmanager
def nginx_https(workdir: Path, backend_port: int, cert: Path, key: Path) -> Iterator[Endpoint]:
    prefix = workdir / "nginx"
    port, plain_port = free_ports(2)
    http_extra = backend_upstream(backend_port)
    server_body = f"""\
        listen 127.0.0.1:{plain_port} backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
{PROXY_LOCATION}"""
    conf = _nginx_conf(prefix, port, http_extra=http_extra, server_body=server_body)
    conf = conf.replace(f"listen 127.0.0.1:{port} backlog=4096", f"listen 127.0.0.1:{port} ssl")
    child = _start_nginx("nginx-https", prefix, port, conf, PROXY_CPU)
    try:
        wait_https(child, port, READY_TIMEOUT_S)
        PLAIN_PORTS["nginx"] = plain_port
        yield Endpoint("nginx", port, child)
    finally:
        child.stop()


# The plain-HTTP port of each target (the same process), for the `plain` reference mode.
PLAIN_PORTS: dict[str, int] = {}
MODES = ("plain", "keepalive", "handshakes")


def measure(endpoint: Endpoint, mode: str, duration_s: int) -> tuple[float, float, float]:
    """(requests/s, CPU microseconds of the proxy process per request, steal %: the larger
    share of the run the hypervisor took from the proxy's or the load's CPU) of one wrk run."""
    assert endpoint.child is not None
    cpu_before = cpu_seconds(endpoint.child.pid)
    steal_before = steal_seconds((PROXY_CPU, LOAD_CPU))
    url = f"https://127.0.0.1:{endpoint.port}/small"
    if mode == "plain":
        plain = f"http://127.0.0.1:{PLAIN_PORTS[endpoint.name]}/small"
        result = wrk.run(plain, connections=64, duration_s=duration_s, cpu=LOAD_CPU)
    elif mode == "keepalive":
        result = wrk.run(url, connections=64, duration_s=duration_s, cpu=LOAD_CPU)
    else:
        result = wrk.run(
            url,
            connections=32,
            duration_s=duration_s,
            cpu=LOAD_CPU,
            headers=("Connection: close",),
        )
    cpu_s = cpu_seconds(endpoint.child.pid) - cpu_before
    steal_s = steal_since(steal_before)
    endpoint.ensure_alive()
    if result.non_2xx_3xx:
        raise TargetError(f"{endpoint.name}: {result.non_2xx_3xx} non-2xx answers in {mode}")
    rps, us = result.requests_per_s, cpu_s * 1e6 / max(1, result.requests)
    return rps, us, 100 * steal_s / max(result.duration_s, 1e-9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument(
        "--modes", default="plain,keepalive,handshakes", help=f"any of {','.join(MODES)}"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another tree (e.g. main, compiled by bench/mypyc_build.sh) run as router-base "
        "in the same rounds, for a before/after",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        cert, key = make_cert(workdir)
        backend = stack.enter_context(nginx_backend(workdir))
        targets = [stack.enter_context(router_https(workdir, backend.port, cert, key))]
        if args.baseline is not None:
            base = router_https(
                workdir, backend.port, cert, key, name="router-base", root=args.baseline
            )
            targets.append(stack.enter_context(base))
        targets.append(stack.enter_context(nginx_https(workdir, backend.port, cert, key)))
        for mode in args.modes.split(","):
            run_mode(targets, mode, args.rounds, args.duration)
    return 0


def run_mode(targets: list[Endpoint], mode: str, rounds: int, duration_s: int) -> None:
    """Rounds of every target, rotating which goes first; ratios to nginx per round."""
    for target in targets:
        measure(target, mode, 1)  # warm up (the router's pool, nginx's upstream keep-alive)
    ratios: dict[str, list[float]] = {t.name: [] for t in targets[:-1]}
    cpu_ratios: dict[str, list[float]] = {t.name: [] for t in targets[:-1]}
    stalled: set[int] = set()  # rounds in which a run lost 5% or more to steal
    for i in range(rounds):
        order = targets[i % len(targets) :] + targets[: i % len(targets)]
        got = {t.name: measure(t, mode, duration_s) for t in order}
        n_rps, n_us, _ = got["nginx"]
        steal = max(s for _, _, s in got.values())
        line = [f"{mode:10s} round {i + 1}:"]
        for name, series in ratios.items():
            rps, us, _ = got[name]
            series.append(rps / n_rps)
            cpu_ratios[name].append(n_us / us)
            line.append(f"{name} {rps:8.0f}/s {us:6.1f} us/req ratio {series[-1]:.2f}")
        line.append(f"nginx {n_rps:8.0f}/s {n_us:6.1f} us/req  steal {steal:.0f}%")
        if steal >= STEAL_SPOIL_PERCENT:
            stalled.add(i)
            line.append("(stalled: left out)")
        print("  ".join(line), flush=True)
    left_out, spoiled = 0, frozenset(stalled)
    for series_by_name in (ratios, cpu_ratios):
        for name, series in series_by_name.items():
            series_by_name[name], left_out = without_stalls(dict(enumerate(series)), spoiled)
    if stalled and not left_out:
        print(f"{mode:10s} only {rounds - len(stalled)} round(s) without steal: all counted")
    for name, series in ratios.items():
        label = "" if name == "region-router" else f" [{name}]"
        print(
            f"{mode:10s} median ratio {statistics.median(series):.2f} "
            f"(min {min(series):.2f}, max {max(series):.2f}); "
            f"CPU per request, nginx/router: {statistics.median(cpu_ratios[name]):.2f}{label}",
            flush=True,
        )
    if "router-base" in ratios:  # the change itself, per round: this tree over the baseline
        pairs = zip(ratios["region-router"], ratios["router-base"], strict=True)
        cpu = zip(cpu_ratios["region-router"], cpu_ratios["router-base"], strict=True)
        rps = statistics.median(a / b for a, b in pairs)
        # cpu ratios are nginx/x, so their quotient is base_us/router_us
        print(
            f"{mode:10s} router/router-base req/s {rps:.2f}; "
            f"CPU per request base/router {statistics.median(a / b for a, b in cpu):.2f}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
