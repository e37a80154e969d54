"""Helpers for admin API tests: a small JSON client, polling, and steady proxy traffic."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict

from router.config.loader import Config
from tests.conftest import make_config
from tests.poll import eventually

# Health checks for tests that count where requests went: a probe delayed by a busy CI
# machine must not flip a region (a failing first probe still marks it down at once).
STEADY_CHECKS = {
    "path": "/health",
    "interval": "200ms",
    "timeout": "200ms",
    "unhealthy_threshold": 10,
}


def steady_config(regions: list[dict[str, Any]] | None = None, **sections: Any) -> Config:
    """``make_config`` with ``STEADY_CHECKS`` unless ``health_check`` is given."""
    sections.setdefault("health_check", STEADY_CHECKS)
    return make_config(regions, **sections)


@dataclass
class Reply:
    status: int
    body: Any
    headers: CIMultiDict[str]

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.body!r}>"


class Admin:
    """JSON over HTTP to the admin listener, as an operator's script would talk to it."""

    def __init__(self, session: aiohttp.ClientSession, port: int, token: str = "") -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> Reply:
        hdrs = dict(headers or {})
        token = self.token if token is None else token
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        body = data
        if json is not None:
            body = orjson.dumps(json)
            hdrs.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.base + path, data=body, headers=hdrs) as r:
            raw = await r.read()
            ctype = r.headers.get("Content-Type", "")
            parsed: Any = orjson.loads(raw) if "json" in ctype and raw else raw.decode()
            return Reply(r.status, parsed, r.headers.copy())

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Reply:
        return await self.call("POST", path, json=json, **kw)

    async def patch(self, path: str, json: Any = None, **kw: Any) -> Reply:
        return await self.call("PATCH", path, json=json, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, **kw)

    async def region(self, region_id: str) -> dict[str, Any]:
        r = await self.get(f"/admin/regions/{region_id}")
        assert r.status == 200, r
        body: dict[str, Any] = r.body
        return body

    async def state(self, region_id: str) -> str:
        return str((await self.region(region_id))["state"])

    async def wait_state(self, region_id: str, *states: str, timeout_s: float = 5.0) -> None:
        async def reached() -> bool:
            return await self.state(region_id) in states

        await eventually(reached, timeout_s, f"{region_id} never reached {states}")


def summary(regions_body: Any) -> list[tuple[Any, ...]]:
    """What an admin write could change in a GET /admin/regions body (not live figures)."""
    keys = ("id", "name", "endpoint", "weight", "priority", "labels", "source", "overrides")
    return [
        tuple(orjson.dumps(r.get(k), option=orjson.OPT_SORT_KEYS) for k in keys)
        for r in regions_body["regions"]
    ]


async def proxy_get(
    session: aiohttp.ClientSession,
    port: int,
    path: str = "/",
    *,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """(status, X-Router-Region) of one request through the proxy."""
    async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r:
        await r.read()
        return r.status, r.headers.get("X-Router-Region", "")


async def spread(
    session: aiohttp.ClientSession, port: int, n: int, path: str = "/", **kw: Any
) -> Counter[str]:
    """Where ``n`` sequential requests went, by region id ("503" etc. for router errors)."""
    out: Counter[str] = Counter()
    for _ in range(n):
        status, region = await proxy_get(session, port, path, **kw)
        out[region if status == 200 else str(status)] += 1
    return out


@dataclass
class Load:
    """Steady traffic through the proxy from ``clients`` concurrent loops."""

    statuses: Counter[int] = field(default_factory=Counter)
    regions: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


@contextlib.asynccontextmanager
async def steady_load(port: int, *, clients: int = 6, path: str = "/load") -> AsyncIterator[Load]:
    load = Load()
    stop = asyncio.Event()

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    status, region = await proxy_get(session, port, path)
                except aiohttp.ClientError as exc:
                    load.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                load.statuses[status] += 1
                load.regions[region] += 1
                if status != 200:
                    load.failures.append(f"status {status}")

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    try:
        yield load
    finally:
        stop.set()
        await asyncio.gather(*tasks)
