"""The smallest end-to-end check: one region, one request through the proxy."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from tests.conftest import StartRouter, make_config


async def test_request_reaches_region_and_back(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.method} {request.raw_path}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    backend = await aiohttp_server(app)
    config = make_config([{"id": "r1", "endpoint": f"http://127.0.0.1:{backend.port}"}])
    service = await start_router(config)
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{service.proxy_port}/a%2Fb?x=1&x=2"
        async with session.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["X-Router-Region"] == "r1"
            assert await resp.text() == "GET /a%2Fb?x=1&x=2"
