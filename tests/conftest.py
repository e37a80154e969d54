"""Shared fixtures: build configs from plain dicts and run the whole router in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvloop
from pytest_aiohttp import AiohttpServer

from router.config.loader import Config, config_from_mapping
from router.service import RouterService
from tests.redis_server import RedisServer, require_redis
from tests.tls import CertFiles, HttpsRouter, StartHttps, issue, new_ca, start_https_router


def make_config(regions: list[dict[str, Any]] | None = None, **sections: Any) -> Config:
    """A config on ephemeral loopback ports; ``sections`` override top-level keys."""
    data: dict[str, Any] = {
        "listen": {"proxy": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "access_log": False,
        "reload": {"watch": False},
        "strategy": "round_robin",
        "health_check": {"path": "/health", "interval": "200ms", "timeout": "150ms"},
        "regions": regions or [],
    }
    data.update(sections)
    return config_from_mapping(data, env={})


StartRouter = Callable[..., Awaitable[RouterService]]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of our own on a free port (the test skips when there is none)."""
    server = RedisServer(require_redis(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def start_router(tmp_path: Any) -> AsyncIterator[StartRouter]:
    """``await start_router(config)`` runs a RouterService until the test ends.

    Waits until the first health-check round is done so tests start from a settled state.
    """
    started: list[RouterService] = []

    async def start(config: Config, *, wait_ready: bool = True, **kwargs: Any) -> RouterService:
        if config.state_dir == "./state":
            config = replace(config, state_dir=str(tmp_path / "state"))
        service = RouterService(config, **kwargs)
        await service.start()
        started.append(service)
        if wait_ready:
            await service.runtime.health.first_round.wait()
        return service

    yield start
    for service in reversed(started):
        await service.stop(grace_s=1.0)


@pytest.fixture
def ca() -> trustme.CA:
    """A CA made for this test: it signs ``certs``, and clients trust it."""
    return new_ca()


@pytest.fixture
def certs(ca: trustme.CA, tmp_path: Path) -> tuple[CertFiles, CertFiles]:
    """``api``: api.test and localhost (the default); ``wild``: *.wild.test."""
    return (
        issue(ca, tmp_path, "api", "api.test", "localhost"),
        issue(ca, tmp_path, "wild", "*.wild.test"),
    )


@pytest.fixture
def start_https(
    aiohttp_server: AiohttpServer,
    start_router: StartRouter,
    tmp_path: Path,
    certs: tuple[CertFiles, CertFiles],
) -> StartHttps:
    """``await start_https(tls_options, **sections)``: a region behind a router that
    terminates TLS with ``certs`` on ``listen.https`` (see tests/tls.py)."""

    async def start(tls: dict[str, Any] | None = None, **sections: Any) -> HttpsRouter:
        return await start_https_router(
            aiohttp_server, start_router, tmp_path, certs, tls, **sections
        )

    return start


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Run in-process tests on uvloop, the loop the router runs on in production."""
    return {"uvloop": uvloop.new_event_loop}
