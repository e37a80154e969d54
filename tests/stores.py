"""Artifact stores for replication tests: an aiohttp store app and nginx with WebDAV PUT.

``Store`` is a region that keeps files under a temp dir: ``PUT`` writes (streamed, hashed)
and answers with a digest header (``report``), ``GET``/``HEAD`` serve the file with an
``ETag`` that changes whenever the file does. It can be told to fail the next N PUTs,
hold PUTs at a gate, rewrite a file while serving it, or send no validators. Every other
path answers ``{"region": name}`` so routing tests can see where requests went.

``Nginx`` runs the Debian nginx binary on loopback with its own prefix, one ``server`` per
root, ``dav_methods PUT``; ``nginx_binary()`` is None where nginx is missing.

``admin_call`` and ``wait_job`` drive the admin API of a running router.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from router.service import RouterService

CHUNK = 64 * 1024
Report = Literal["digest", "json", "etag", "none"]


def payload(n: int, seed: int = 0) -> Iterator[bytes]:
    """``n`` deterministic pseudo-random-looking bytes in 1 MiB pieces (cheap to make)."""
    block = hashlib.sha256(f"seed{seed}".encode()).digest() * (1 << 15)  # 1 MiB
    sent = 0
    while sent < n:
        size = min(len(block), n - sent)
        yield block[:size]
        sent += size


def write_payload(path: Path, n: int, seed: int = 0) -> str:
    """Write ``payload(n, seed)`` to ``path``; returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for chunk in payload(n, seed):
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(eq=False)
class Store:
    name: str
    root: Path
    report: Report = "digest"  # what a PUT answer tells about the stored copy
    validators: bool = True  # ETag and Last-Modified on GET/HEAD
    fail_puts: int = 0  # answer 503 to this many PUTs (after reading their body)
    put_gate: asyncio.Event | None = None  # PUTs wait here before answering
    rewrite_during_get: bytes | None = None  # written in place after the first GET chunk
    hide_on_get: bool = False  # HEAD finds the file, GET answers 404
    get_delay_s: float = 0.0  # pause between GET chunks
    server: Any = None
    puts: list[str] = field(default_factory=list)  # paths of PUTs that stored a file
    put_attempts: int = 0
    gets: list[str] = field(default_factory=list)  # paths of full GETs
    put_waiting: asyncio.Event = field(default_factory=asyncio.Event)
    requests: int = 0  # routed requests (not store or health traffic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"id": self.name, "endpoint": self.url, **extra}

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 40)
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/models/{tail:.*}", self._store)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _echo(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.json_response({"region": self.name})

    def _etag(self, path: Path) -> str:
        st = path.stat()
        return f'"{st.st_mtime_ns:x}-{st.st_ino:x}-{st.st_size:x}"'

    async def _store(self, request: web.Request) -> web.StreamResponse:
        path = self.file(request.path)
        if request.method == "PUT":
            return await self._put(request, path)
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405)
        if not path.is_file() or (self.hide_on_get and request.method == "GET"):
            return web.Response(status=404)
        headers = {"Content-Length": str(path.stat().st_size)}
        if self.validators:
            headers["ETag"] = self._etag(path)
            headers["Last-Modified"] = formatdate(path.stat().st_mtime, usegmt=True)
        resp = web.StreamResponse(headers=headers)
        resp.content_length = path.stat().st_size
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        with path.open("rb") as f:
            first = True
            while chunk := f.read(CHUNK):
                await resp.write(chunk)
                if first and self.rewrite_during_get is not None:
                    path.write_bytes(self.rewrite_during_get)  # in place: a torn read
                    self.rewrite_during_get = None
                first = False
                if self.get_delay_s:
                    await asyncio.sleep(self.get_delay_s)
        await resp.write_eof()
        self.gets.append(request.path)
        return resp

    async def _put(self, request: web.Request, path: Path) -> web.Response:
        self.put_attempts += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".uploading")
        digest = hashlib.sha256()
        size = 0
        with tmp.open("wb") as f:
            async for chunk in request.content.iter_chunked(CHUNK):
                digest.update(chunk)
                f.write(chunk)
                size += len(chunk)
        if self.fail_puts > 0:
            self.fail_puts -= 1
            tmp.unlink()
            return web.Response(status=503, text="store busy")
        if self.put_gate is not None:
            self.put_waiting.set()
            try:
                await self.put_gate.wait()
            except asyncio.CancelledError:
                tmp.unlink()
                raise
        os.replace(tmp, path)
        self.puts.append(request.path)
        hexdigest = digest.hexdigest()
        if self.report == "digest":
            b64 = base64.b64encode(digest.digest()).decode()
            return web.Response(status=201, headers={"Digest": f"sha-256={b64}"})
        if self.report == "json":
            return web.json_response({"sha256": hexdigest, "size": size}, status=201)
        if self.report == "etag":
            return web.Response(status=201, headers={"ETag": f'"{hexdigest}"'})
        return web.Response(status=201)


async def start_store(aiohttp_server: AiohttpServer, tmp_path: Path, name: str, **kw: Any) -> Store:
    store = Store(name=name, root=tmp_path / f"store-{name}", **kw)
    store.root.mkdir(parents=True, exist_ok=True)
    store.server = await aiohttp_server(store.app())
    return store


# -- nginx ------------------------------------------------------------------------------


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{user}
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    sendfile on;
{servers}
}}
"""

_NGINX_SERVER = """
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /health {{ return 200 "ok"; }}
        location / {{
            dav_methods PUT DELETE;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            client_max_body_size 0;
        }}
    }}
"""


@dataclass
class NginxSite:
    name: str
    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"id": self.name, "endpoint": self.url, **extra}

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")


class Nginx:
    """One nginx process serving a WebDAV-PUT site per name, each with its own root."""

    def __init__(self, binary: str, prefix: Path, names: list[str]) -> None:
        self.binary = binary
        self.prefix = prefix
        self.sites = {
            n: NginxSite(name=n, port=free_port(), root=prefix / f"root-{n}") for n in names
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        for site in self.sites.values():
            site.root.mkdir(parents=True, exist_ok=True)
        servers = "".join(
            _NGINX_SERVER.format(port=s.port, root=s.root) for s in self.sites.values()
        )
        conf = self.prefix / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(_NGINX_CONF.format(prefix=self.prefix, servers=servers, user=user))
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.prefix), "-c", str(conf), "-e", "stderr"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        for site in self.sites.values():
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"nginx exited: {err}")
                try:
                    socket.create_connection(("127.0.0.1", site.port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("nginx did not start listening") from None
                    time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None


# -- driving the admin API ------------------------------------------------------------------

FINISHED = ("succeeded", "failed", "cancelled")


async def admin_call(
    service: RouterService, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{service.admin_port}{path}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, json=body) as resp,
    ):
        return resp.status, await resp.json()


async def wait_job(
    service: RouterService,
    job_id: str,
    until: Any = None,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Poll the job until ``until(job)`` (default: it finished); returns the job's JSON."""
    check = until or (lambda job: job["state"] in FINISHED)
    deadline = time.monotonic() + timeout_s
    while True:
        status, job = await admin_call(service, "GET", f"/admin/replications/{job_id}")
        assert status == 200, job
        if check(job):
            return dict(job)
        if time.monotonic() > deadline:
            raise AssertionError(f"job did not get there in {timeout_s}s: {job}")
        await asyncio.sleep(0.02)
