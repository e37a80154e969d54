"""HTTP/2 throughput: region-router's h2c front end against nginx's, the same backend.

`python bench/h2load.py [--rounds 5] [--requests 20000] [--clients 4] [--streams 10]
[--roots DIR,DIR]`

Starts the backend nginx (bench/targets.py: static /small, 100 B), nginx as an h2c reverse
proxy (``listen ... http2``: h2c with prior knowledge, keep-alive upstream pool, the same
proxy directives bench/run.py uses) and region-router (``bare`` config plus
``http2.enabled``), each proxy alone on the proxy CPU. Each round runs
``h2load -n N -c C -m M http://127.0.0.1:PORT/small`` once against each proxy, in turn
(the order alternates: the machine drifts); the ratio is taken per round, and the report
gives the median of those ratios plus every round's figures and failed/errored counts.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import yaml

from bench.process import Child, free_ports, pinned
from bench.targets import (
    LOAD_CPU,
    PROXY_CPU,
    PROXY_LOCATION,
    Endpoint,
    _nginx_conf,
    _start_nginx,
    backend_upstream,
    bare_config,
    nginx_backend,
    region_router,
)

_FINISHED = re.compile(r"finished in [\d.]+m?s, ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored"
)


def h2load(port: int, requests: int, clients: int, streams: int) -> tuple[float, int, int]:
    """(req/s, failed, errored) of one h2load run on the load CPU."""
    argv = pinned(
        LOAD_CPU,
        ["h2load", "-n", str(requests), "-c", str(clients), "-m", str(streams),
         f"http://127.0.0.1:{port}/small"],
    )  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False).stdout
    rate, counts = _FINISHED.search(out), _REQUESTS.search(out)
    if rate is None or counts is None:
        raise RuntimeError(f"h2load output not understood:\n{out}")
    return float(rate.group(1)), int(counts.group(5)), int(counts.group(6))


def wait_h2(child: Child, port: int, timeout_s: float = 30.0) -> None:
    """Ready when one h2c request succeeds (nginx's h2c listener speaks no HTTP/1.1)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
        try:
            _, failed, errored = h2load(port, 1, 1, 1)
            if not failed and not errored:
                return
        except RuntimeError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{child.name} not ready on {port}")


@contextmanager
def nginx_h2c(workdir: Path, backend_port: int) -> Iterator[Endpoint]:
    prefix = workdir / "nginx-h2c"
    (port,) = free_ports(1)
    http_extra = backend_upstream(backend_port)
    conf = _nginx_conf(prefix, port, http_extra=http_extra, server_body=PROXY_LOCATION)
    conf = conf.replace(f"listen 127.0.0.1:{port} backlog=4096;", f"listen 127.0.0.1:{port} http2;")
    child = _start_nginx("nginx-h2c", prefix, port, conf, PROXY_CPU)
    try:
        wait_h2(child, port)
        yield Endpoint("nginx-h2c", port, child)
    finally:
        child.stop()


def h2_config(backend_port: int, listen: dict[str, str], state_dir: Path) -> str:
    config = yaml.safe_load(bare_config(backend_port, listen, state_dir))
    config["http2"] = {"enabled": True, "max_concurrent_streams": 100}
    return yaml.safe_dump(config, sort_keys=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument(
        "--roots",
        default="",
        help="comma-separated trees to run region-router from (e.g. a compiled copy before "
        "and after a change, from bench/mypyc_build.sh), each a target of the same rounds; "
        "default: this checkout",
    )
    args = parser.parse_args()
    roots = [Path(r).resolve() for r in args.roots.split(",") if r]
    with tempfile.TemporaryDirectory(prefix="h2bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        backend = stack.enter_context(nginx_backend(work))
        nginx = stack.enter_context(nginx_h2c(work, backend.port))
        targets = [nginx]
        for n, root in enumerate(roots or [None]):
            name = f"h2-{n}" if roots else "h2"
            router = stack.enter_context(
                region_router(work, backend.port, name=name, config=h2_config, root=root)
            )
            wait_h2(router.child, router.port) if router.child else None  # type: ignore[func-returns-value]
            targets.append(router)
            if root is not None:
                print(f"{name}: {root}")
        routers = [t.name for t in targets[1:]]
        ratios: dict[str, list[float]] = {name: [] for name in routers}
        print(
            f"h2load -n {args.requests} -c {args.clients} -m {args.streams} /small (100 B), "
            f"{args.rounds} paired rounds"
        )
        for i in range(args.rounds):
            results: dict[str, tuple[float, int, int]] = {}
            # the order rotates each round: the machine drifts
            shift = i % len(targets)
            for target in targets[shift:] + targets[:shift]:
                results[target.name] = h2load(
                    target.port, args.requests, args.clients, args.streams
                )
            n_rate, n_fail, n_err = results["nginx-h2c"]
            line = f"round {i + 1}: nginx {n_rate:.0f} req/s ({n_fail} failed, {n_err} errored)"
            for name in routers:
                r_rate, r_fail, r_err = results[name]
                ratios[name].append(r_rate / n_rate)
                line += (
                    f"; {name} {r_rate:.0f} req/s ({r_fail} failed, {r_err} errored), "
                    f"ratio {r_rate / n_rate:.3f}"
                )
            print(line)
        for name in routers:
            values = ratios[name]
            print(
                f"{name}: median ratio region-router/nginx {statistics.median(values):.3f} "
                f"(rounds {min(values):.3f}-{max(values):.3f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
