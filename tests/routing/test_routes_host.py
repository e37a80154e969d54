"""Routes that match on Host, through the proxy: the port and case of Host do not matter."""

from __future__ import annotations

import aiohttp
from pytest_aiohttp import AiohttpServer

from tests.backends import start_region
from tests.conftest import StartRouter, make_config


async def test_host_routes_match_without_port_and_case_and_others_take_the_default(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    api = await start_region(aiohttp_server, "api")
    web = await start_region(aiohttp_server, "web")
    config = make_config(
        [api.config(), web.config()],
        routes=[
            {"match": {"host": "api.example.com"}, "regions": ["api"]},
            {"match": {"host": "*.static.example.com", "path_prefix": "/img/"}, "regions": ["api"]},
            {"match": {"path_prefix": "/"}, "regions": ["web"]},
        ],
    )
    service = await start_router(config)
    base = f"http://127.0.0.1:{service.proxy_port}"
    cases = [
        ("API.Example.com:8080", "/x", "api"),
        ("api.example.com", "/x", "api"),
        ("cdn.static.example.com", "/img/a.png", "api"),
        ("cdn.static.example.com", "/css/a.css", "web"),
        ("www.example.com", "/x", "web"),
    ]
    async with aiohttp.ClientSession() as session:
        for host, path, expected in cases:
            async with session.get(f"{base}{path}", headers={"Host": host}) as resp:
                assert resp.status == 200
                assert resp.headers["X-Router-Region"] == expected, (host, path)
