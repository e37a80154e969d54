"""The processes under test and the backend they front: configs, start, readiness, stop."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml

from bench.process import Child, TargetError, free_ports, http_get, pinned, wait_ready

REPO_ROOT = Path(__file__).resolve().parent.parent
PROXY_CPU = 0  # the proxy under test, alone
LOAD_CPU = 1  # the backend nginx and wrk
INSTALL_HINT = "apt-get install -y wrk nginx haproxy"
READY_TIMEOUT_S = 10.0
ROUTER_READY_TIMEOUT_S = 30.0

# Static files the backend serves, by URL path (without the slash).
SIZES: dict[str, int] = {"small": 100, "64k": 64 * 1024, "1m": 1024 * 1024}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where wrk sends load, and the process (if any) whose CPU time is the proxy's."""

    name: str
    port: int
    child: Child | None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ensure_alive(self) -> None:
        if self.child is not None:
            self.child.ensure_alive()

    def log_tail(self) -> str:
        return self.child.log_tail() if self.child is not None else ""


Starter = Callable[[Path, int], AbstractContextManager[Endpoint]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One thing to put load on: its CLI key, its report label, what it needs, how to start it."""

    key: str
    label: str
    tools: tuple[str, ...]
    start: Starter  # (workdir, backend_port) -> context manager yielding the Endpoint

    def missing_tools(self) -> list[str]:
        return [tool for tool in self.tools if shutil.which(tool) is None]


def _nginx_conf(
    prefix: Path,
    port: int,
    *,
    http_extra: str,
    server_body: str,
    workers: int = 1,
    hosts: tuple[str, ...] = ("127.0.0.1",),
) -> str:
    temp = prefix / "tmp"
    master = "off" if workers == 1 else "on"
    reuseport = " reuseport" if workers > 1 else ""
    listens = "\n".join(f"        listen {host}:{port} backlog=4096{reuseport};" for host in hosts)
    return f"""\
daemon off;
master_process {master};
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log stderr warn;
worker_rlimit_nofile 16384;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    tcp_nodelay on;
{http_extra}
    server {{
{listens}
{server_body}
    }}
}}
"""


def _start_nginx(name: str, prefix: Path, port: int, conf: str, cpu: int) -> Child:
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    argv = ["nginx", "-p", f"{prefix}/", "-e", "stderr", "-c", str(conf_path)]
    return Child(name, pinned(cpu, argv), prefix / "nginx.log")


# The backend also answers on these loopback addresses: "defaults" names three regions on it.
BACKEND_HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


@contextmanager
def nginx_backend(workdir: Path) -> Iterator[Endpoint]:
    """The origin every target fronts: static /small, /64k, /1m and /health, on the load CPU.

    It listens on 127.0.0.1-3 (one port), so three regions can be three distinct endpoints.
    """
    prefix = workdir / "backend"
    www = prefix / "www"
    www.mkdir(parents=True)
    for name, size in SIZES.items():
        (www / name).write_bytes(b"x" * size)
    (port,) = free_ports(1)
    http_extra = """\
    sendfile on;
    tcp_nopush on;
    open_file_cache max=64 inactive=60s;
    default_type application/octet-stream;"""
    server_body = f"""\
        root {www};
        location = /health {{
            default_type text/plain;
            return 200 "ok\\n";
        }}
        location / {{
        }}"""
    conf = _nginx_conf(
        prefix, port, http_extra=http_extra, server_body=server_body, hosts=BACKEND_HOSTS
    )
    child = _start_nginx("nginx-backend", prefix, port, conf, LOAD_CPU)
    try:
        wait_ready(child, port, "/health", READY_TIMEOUT_S)
        yield Endpoint("nginx-backend", port, child)
    finally:
        child.stop()


@contextmanager
def direct(workdir: Path, backend_port: int) -> Iterator[Endpoint]:
    """No proxy: wrk talks to the backend itself. The baseline every proxy adds cost to."""
    del workdir
    yield Endpoint("direct", backend_port, None)


# The reference proxy's per-location settings, kept in one place so they can be argued about.
# nginx's default 4k/8k proxy buffers halve its 64 KiB throughput here, and with buffering on a
# 1 MiB body either spills to a temp file or stalls the upstream. Streaming through one 64 KiB
# buffer is what region-router and HAProxy do, so the reference streams too. (proxy_buffers is
# only there because nginx validates proxy_busy_buffers_size against it even when unused.)
NGINX_PROXY_DIRECTIVES = """\
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;"""
PROXY_LOCATION = f"""\
        location / {{
{NGINX_PROXY_DIRECTIVES}
        }}"""


def backend_upstream(backend_port: int) -> str:
    """nginx's keep-alive pool to the backend, as every nginx proxy target uses it."""
    return f"""\
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 75s;
    }}"""


@contextmanager
def nginx_proxy(workdir: Path, backend_port: int, workers: int = 1) -> Iterator[Endpoint]:
    """nginx as a reverse proxy (``workers`` processes, reuseport), keep-alive upstream pool."""
    prefix = workdir / f"nginx-proxy-w{workers}"
    (port,) = free_ports(1)
    http_extra = backend_upstream(backend_port)
    conf = _nginx_conf(
        prefix, port, http_extra=http_extra, server_body=PROXY_LOCATION, workers=workers
    )
    child = _start_nginx("nginx-proxy", prefix, port, conf, PROXY_CPU)
    try:
        wait_ready(child, port, "/health", READY_TIMEOUT_S)
        yield Endpoint("nginx" if workers == 1 else f"nginx-w{workers}", port, child)
    finally:
        child.stop()


@contextmanager
def haproxy(workdir: Path, backend_port: int) -> Iterator[Endpoint]:
    """HAProxy in http mode, one thread, reusing idle server connections."""
    prefix = workdir / "haproxy"
    prefix.mkdir(parents=True)
    (port,) = free_ports(1)
    conf_path = prefix / "haproxy.cfg"
    conf_path.write_text(f"""\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse always

frontend bench
    bind 127.0.0.1:{port}
    default_backend origin

backend origin
    server origin1 127.0.0.1:{backend_port}
""")
    argv = ["haproxy", "-db", "-f", str(conf_path)]
    child = Child("haproxy", pinned(PROXY_CPU, argv), prefix / "haproxy.log")
    try:
        wait_ready(child, port, "/health", READY_TIMEOUT_S)
        yield Endpoint("haproxy", port, child)
    finally:
        child.stop()


@contextmanager
def floor(workdir: Path, backend_port: int, splice: bool = False) -> Iterator[Endpoint]:
    """bench/floor.py: the fastest keep-alive proxy Python can be on uvloop, no features."""
    name = "floor-splice" if splice else "floor"
    prefix = workdir / name
    prefix.mkdir(parents=True)
    (port,) = free_ports(1)
    argv = [sys.executable, str(REPO_ROOT / "bench" / "floor.py"), str(port), str(backend_port)]
    argv += ["--splice"] if splice else []
    child = Child(name, pinned(PROXY_CPU, argv), prefix / "floor.log")
    try:
        wait_ready(child, port, "/health", READY_TIMEOUT_S)
        yield Endpoint(name, port, child)
    finally:
        child.stop()


def bare_config(backend_port: int, listen: dict[str, str], state_dir: Path) -> str:
    """The fewest features: one region, ``weighted``, no access log (metrics are always on)."""
    config = {
        "listen": listen,
        "state_dir": str(state_dir),
        "strategy": "weighted",
        "access_log": False,
        "reload": {"watch": False},
        "health_check": {"path": "/health", "interval": "5s", "timeout": "2s"},
        "regions": [{"id": "bench-1", "endpoint": f"http://127.0.0.1:{backend_port}"}],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _sub(
    pattern: str, replacement: str | Callable[[re.Match[str]], str], text: str, count: int = 1
) -> str:
    """re.sub that insists on ``count`` matches: config.yaml changing shape must fail loudly."""
    new, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if n != count:
        raise TargetError(f"config.yaml: expected {count} match(es) of {pattern!r}, found {n}")
    return new


def defaults_config(backend_port: int, listen: dict[str, str], state_dir: Path) -> str:
    """What users run: the repo's config.yaml as it is (``latency`` over three regions, health
    checks every second, retries, routes, metrics, the config watcher) with the access log
    on, to stdout. Edited as text (YAML 1.1 would read its ``on:`` key as ``true``).

    The three regions are the one backend on 127.0.0.1, .2 and .3, so each is its own
    endpoint (own upstream pool) as three real regions would be.
    """
    text = (REPO_ROOT / "config.yaml").read_text()
    text = _sub(r'^  proxy: ".*"$', f'  proxy: "{listen["proxy"]}"', text)
    text = _sub(r'^  admin: ".*"$', f'  admin: "{listen["admin"]}"', text)
    text = _sub(r"^state_dir: .*$", f'state_dir: "{state_dir}"', text)
    text = _sub(r"^access_log: .*$", "access_log: true", text)
    hosts = iter(BACKEND_HOSTS)
    text = _sub(
        r"^    endpoint: http://127\.0\.0\.1:\d+$",
        lambda _: f"    endpoint: http://{next(hosts)}:{backend_port}",
        text,
        count=len(BACKEND_HOSTS),
    )
    return text


def defaults_nolog_config(backend_port: int, listen: dict[str, str], state_dir: Path) -> str:
    """``defaults`` with ``access_log: false``: the pair shows what the access log costs."""
    text = defaults_config(backend_port, listen, state_dir)
    return _sub(r"^access_log: true$", "access_log: false", text)


ConfigText = Callable[[int, dict[str, str], Path], str]


def _compiled_root(variable: str = "BENCH_COMPILED_ROOT") -> Path:
    """A copy of a checkout with the proxy path compiled by mypyc (bench/mypyc_build.sh).

    ``BENCH_COMPILED_ROOT`` is the tree under test; ``BENCH_BASELINE_ROOT`` (the ``-base``
    targets) another tree, such as main before a change, so both run in the same rounds.
    """
    value = os.environ.get(variable)
    if not value:
        raise TargetError(f"set {variable} to a tree built by bench/mypyc_build.sh")
    return Path(value)


@contextmanager
def region_router(
    workdir: Path,
    backend_port: int,
    workers: int = 0,
    *,
    name: str = "bare",
    config: ConfigText = bare_config,
    root: Path | None = None,
) -> Iterator[Endpoint]:
    """`python -m router run -c config.yaml [--workers N]` from this checkout.

    Ready when admin /readyz is 200. ``workers`` 0 is the single-process mode; N > 0 is a
    supervisor plus N workers, all pinned to the proxy CPU (the process tree's CPU time
    is what the report divides by requests). Its stdout (the access log, when on) goes to
    a file in the work dir, as a service manager's journal or a redirect would take it.
    """
    prefix = workdir / f"router-{name}-w{workers}"
    state_dir = prefix / "state"
    state_dir.mkdir(parents=True)
    proxy_port, admin_port = free_ports(2)
    conf_path = prefix / "config.yaml"
    listen = {"proxy": f"127.0.0.1:{proxy_port}", "admin": f"127.0.0.1:{admin_port}"}
    conf_path.write_text(config(backend_port, listen, state_dir))
    if root is None and name.endswith("-mypyc"):
        root = _compiled_root()
    elif root is None and name.endswith("-base"):
        root = _compiled_root("BENCH_BASELINE_ROOT")
    root = root or REPO_ROOT
    pythonpath = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    env.pop("PYTHONUNBUFFERED", None)  # the access log buffers on purpose
    argv = [sys.executable, "-m", "router", "run", "-c", str(conf_path)]
    if workers:
        argv += ["--workers", str(workers)]
    child = Child(
        f"router-{name}", pinned(PROXY_CPU, argv), prefix / "router.log", cwd=root, env=env
    )
    try:
        wait_ready(child, admin_port, "/readyz", ROUTER_READY_TIMEOUT_S)
        yield Endpoint(name if not workers else f"{name}-w{workers}", proxy_port, child)
    finally:
        child.stop()


# Report order: the baseline, the system under test, then the references.
TARGETS: tuple[Target, ...] = (
    Target(key="direct", label="direct", tools=(), start=direct),
    Target(
        key="defaults",
        label="region-router defaults",
        tools=(),
        start=partial(region_router, name="defaults", config=defaults_config),
    ),
    Target(key="bare", label="region-router bare", tools=(), start=region_router),
    # The same two from a mypyc-compiled copy (BENCH_COMPILED_ROOT, built by bench/mypyc_build.sh).
    Target(
        key="defaults-mypyc",
        label="region-router defaults, mypyc",
        tools=(),
        start=partial(region_router, name="defaults-mypyc", config=defaults_config),
    ),
    Target(
        key="bare-mypyc",
        label="region-router bare, mypyc",
        tools=(),
        start=partial(region_router, name="bare-mypyc"),
    ),
    # defaults with the access log off: beside "defaults", what the log costs.
    Target(
        key="defaults-nolog",
        label="region-router defaults, log off",
        tools=(),
        start=partial(region_router, name="defaults-nolog", config=defaults_nolog_config),
    ),
    Target(
        key="defaults-nolog-mypyc",
        label="region-router defaults, log off, mypyc",
        tools=(),
        start=partial(region_router, name="defaults-nolog-mypyc", config=defaults_nolog_config),
    ),
    # The same two from a baseline tree (BENCH_BASELINE_ROOT, compiled), for before/after.
    Target(
        key="defaults-base",
        label="region-router defaults, baseline tree",
        tools=(),
        start=partial(region_router, name="defaults-base", config=defaults_config),
    ),
    Target(
        key="bare-base",
        label="region-router bare, baseline tree",
        tools=(),
        start=partial(region_router, name="bare-base"),
    ),
    Target(key="nginx", label="nginx", tools=("nginx",), start=nginx_proxy),
    Target(key="haproxy", label="haproxy", tools=("haproxy",), start=haproxy),
    # What Python itself allows on this loop: a byte relay, and the same with the body
    # spliced kernel to kernel (bench/floor.py). Measuring sticks, not proxies.
    Target(key="floor", label="floor: uvloop byte relay", tools=(), start=floor),
    Target(
        key="floor-splice",
        label="floor: body by splice(2)",
        tools=(),
        start=partial(floor, splice=True),
    ),
    # The workers dimension (`--targets router-w1,router-w2,nginx,nginx-w2`): same
    # pinning, so CPU per request shows what the supervisor and channel cost.
    Target(
        key="router-w1",
        label="region-router --workers 1",
        tools=(),
        start=partial(region_router, workers=1),
    ),
    Target(
        key="router-w2",
        label="region-router --workers 2",
        tools=(),
        start=partial(region_router, workers=2),
    ),
    Target(
        key="nginx-w2",
        label="nginx 2 workers",
        tools=("nginx",),
        start=partial(nginx_proxy, workers=2),
    ),
)
DEFAULT_TARGETS: tuple[str, ...] = ("direct", "defaults", "bare", "nginx")


def check_response(endpoint: Endpoint, size: str) -> None:
    """One GET before the load: 200 and exactly the file's length, or the target is broken."""
    path = f"/{size}"
    try:
        status, body = http_get(endpoint.port, path, timeout_s=5.0)
    except (OSError, http.client.HTTPException) as exc:
        message = f"GET {path} via {endpoint.name} failed: {type(exc).__name__}: {exc}"
        raise TargetError(message, endpoint.log_tail()) from exc
    if status != 200 or len(body) != SIZES[size]:
        raise TargetError(
            f"GET {path} via {endpoint.name} returned HTTP {status} with {len(body)} bytes, "
            f"expected 200 with {SIZES[size]}",
            endpoint.log_tail(),
        )
