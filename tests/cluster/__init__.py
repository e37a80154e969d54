"""Several router processes sharing one Redis (``state.backend: redis``), for the cluster tests.

``Cluster.start(n, regions)`` runs ``n`` real routers (``python -m router run``), each with
its own ports, ``state_dir`` and ``instance_id`` (``inst-1`` ...), all with the same
``key_prefix``; ``Site`` is a test region whose health check fails for the instances named
in ``fail_for`` (it reads the probe's ``X-Router-Instance`` header).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from tests.backends import RouterProcess, free_ports, router_process
from tests.poll import eventually  # noqa: F401  # still importable from here, as before tests/poll.py
from tests.redis_server import RedisServer


@dataclass(eq=False)
class Site:
    name: str
    fail_for: set[str] = field(default_factory=set)  # instance ids whose probes fail
    down: bool = False  # every probe fails
    hits: int = 0
    server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"id": self.name, "endpoint": self.url, **extra}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        if self.down or request.headers.get("X-Router-Instance") in self.fail_for:
            return web.Response(status=503, text="down for you")
        return web.Response(text="ok")

    async def _echo(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.json_response({"region": self.name})


async def start_site(aiohttp_server: AiohttpServer, name: str) -> Site:
    site = Site(name)
    site.server = await aiohttp_server(site.app())
    return site


@dataclass(eq=False)
class Instance:
    id: str
    router: RouterProcess  # the real CLI, started by tests.backends.router_process

    @property
    def proc(self) -> asyncio.subprocess.Process:
        return self.router.process

    @property
    def proxy(self) -> str:
        return self.router.proxy

    @property
    def admin(self) -> str:
        return self.router.admin

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)


class Cluster:
    def __init__(self, tmp_path: Path, redis: RedisServer) -> None:
        self.tmp_path = tmp_path
        self.redis = redis
        self.key_prefix = f"test:{uuid.uuid4().hex[:8]}"
        self.instances: list[Instance] = []
        self.session: aiohttp.ClientSession | None = None
        self._processes = contextlib.AsyncExitStack()

    async def start(
        self, n: int, regions: list[dict[str, Any]], *, workers: int = 0, **extra: Any
    ) -> list[Instance]:
        """``workers``: each instance runs with ``--workers N`` (0: one process)."""
        self.session = aiohttp.ClientSession()
        # Every instance's two ports from one call, so they are distinct: picked one instance
        # at a time, a port freed by one pick could come back in the next, and an instance
        # whose admin port another took fails to start while /readyz answers from the other.
        ports = free_ports(2 * n)
        started = await asyncio.gather(
            *(
                self._start_one(
                    f"inst-{i + 1}",
                    regions,
                    {
                        "listen": {
                            "proxy": f"127.0.0.1:{ports[2 * i]}",
                            "admin": f"127.0.0.1:{ports[2 * i + 1]}",
                        },
                        **extra,
                    },
                    workers,
                )
                for i in range(n)
            )
        )
        self.instances.extend(started)
        return list(started)

    async def _start_one(
        self, instance_id: str, regions: list[dict[str, Any]], extra: dict[str, Any], workers: int
    ) -> Instance:
        home = self.tmp_path / instance_id
        home.mkdir(parents=True, exist_ok=True)
        config = {
            "strategy": "round_robin",
            "state": {"backend": "redis", "url": self.redis.url, "key_prefix": self.key_prefix},
            "instance_id": instance_id,
            "health_check": {"path": "/health", "interval": "300ms", "timeout": "200ms"},
            "failover": {"slow_start": "0s"},
            "regions": regions,
            **extra,
        }
        router = await self._processes.enter_async_context(
            router_process(home, config, workers=workers)
        )
        return Instance(instance_id, router)

    async def call(
        self, inst: Instance, method: str, path: str, body: Any = None
    ) -> tuple[int, Any, dict[str, str]]:
        assert self.session is not None
        async with self.session.request(method, f"{inst.admin}{path}", json=body) as resp:
            raw = await resp.read()
            doc = orjson.loads(raw) if resp.content_type == "application/json" else raw.decode()
            return resp.status, doc, dict(resp.headers)

    async def get(self, inst: Instance, path: str) -> Any:
        status, doc, _ = await self.call(inst, "GET", path)
        assert status == 200, (path, status, doc)
        return doc

    async def region_states(self, region_id: str) -> list[str | None]:
        out: list[str | None] = []
        for inst in self.live():
            regions = (await self.get(inst, "/admin/regions"))["regions"]
            out.append(next((r["state"] for r in regions if r["id"] == region_id), None))
        return out

    def live(self) -> list[Instance]:
        return [i for i in self.instances if i.proc.returncode is None]

    async def proxied(self, inst: Instance, path: str = "/x") -> tuple[int, str | None]:
        assert self.session is not None
        async with self.session.get(f"{inst.proxy}{path}") as resp:
            await resp.read()
            return resp.status, resp.headers.get("X-Router-Region")

    async def stop(self) -> None:
        await self._processes.aclose()  # SIGTERM each (SIGKILL after 10 s), by PID
        if self.session is not None:
            await self.session.close()
