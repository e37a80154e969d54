"""HTTP/2 from clients: h2c with prior knowledge and ALPN h2, each stream one request with
the HTTP/1.1 path's semantics; regions still get HTTP/1.1."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from tests.backends import (
    pattern_sha256,
    probe_passes,
    raw_exchange,
    start_region,
)
from tests.conftest import StartRouter, make_config
from tests.h2client import H2Client
from tests.tls import client_context, issue, new_ca

AiohttpServer = Any
H2 = {"enabled": True, "max_concurrent_streams": 100}


async def _h2(port: int, **kwargs: Any) -> H2Client:
    client = H2Client(**kwargs)
    await client.connect(port)
    return client


async def test_h2c_prior_knowledge_streams_are_proxied_over_http11(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region = await start_region(aiohttp_server, "r1")
    service = await start_router(make_config([region.config()], http2=H2), probe=probe_passes)
    client = await _h2(service.proxy_port)
    try:
        responses = await asyncio.gather(
            *(
                client.request(
                    f"/items/{i}?q=1",
                    headers=[("x-test", str(i)), ("cookie", "a=1"), ("cookie", "b=2")],
                )
                for i in range(5)
            )
        )
        for i, resp in enumerate(responses):
            assert resp.status == 200, resp
            seen = json.loads(resp.body)
            assert seen["raw_path"] == f"/items/{i}?q=1"
            assert seen["version"] == "HTTP/1.1" or seen["version"] == "1.1"
            headers = {k.lower(): v for k, v in seen["headers"]}
            assert headers["host"] == "example.com" or headers["host"].startswith("127.0.0.1")
            assert headers["x-test"] == str(i)
            assert headers["cookie"] == "a=1; b=2"
            assert headers["x-forwarded-proto"] == "http"
            assert headers["x-forwarded-host"] == "example.com"
            assert headers["x-forwarded-for"] == "127.0.0.1"
            assert resp.header("x-router-region") == "r1"
            assert resp.header("x-request-id") == headers["x-request-id"]
        # a body both ways, with and without content-length
        up = await client.request("/upload", method="POST", body=b"x" * 200_000)
        assert json.loads(up.body)["body_length"] == 200_000
        big = await client.request("/bytes/3000000")
        assert len(big.body) == 3_000_000
        import hashlib

        assert hashlib.sha256(big.body).hexdigest() == pattern_sha256(3_000_000)
    finally:
        await client.close()
    # HTTP/1.1 on the same listener is unchanged
    plain = await raw_exchange(service.proxy_port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert plain.status == 200


async def test_router_made_errors_are_json_on_the_stream(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region = await start_region(aiohttp_server, "r1")
    region.fail_status = 503
    service = await start_router(
        make_config([region.config()], http2=H2, retries={"max_retries": 0}), probe=probe_passes
    )
    client = await _h2(service.proxy_port)
    try:
        climb = await client.request("/../../etc/passwd")
        assert climb.status == 400
        assert climb.header("x-router-error") is not None
        assert "error" in json.loads(climb.body)
        failed = await client.request("/x")
        assert failed.status == 503
        ok = await client.request("/health")  # the connection is still usable
        assert ok.status in (200, 503)
    finally:
        await client.close()


async def test_alpn_h2_on_https(
    aiohttp_server: AiohttpServer, start_router: StartRouter, tmp_path: Path
) -> None:
    region = await start_region(aiohttp_server, "r1")
    ca = new_ca()
    cert = issue(ca, tmp_path, "api", "localhost")
    config = make_config(
        [region.config()],
        http2=H2,
        listen={"proxy": "127.0.0.1:0", "admin": "127.0.0.1:0", "https": "127.0.0.1:0"},
        tls={"certificates": [cert.config()]},
    )
    service = await start_router(config, probe=probe_passes)
    assert service.https_port is not None
    client = H2Client()
    await client.connect(service.https_port, ssl_ctx=client_context(ca, alpn=["h2", "http/1.1"]))
    try:
        resp = await client.request("/secure")
        assert resp.status == 200
        seen = json.loads(resp.body)
        headers = {k.lower(): v for k, v in seen["headers"]}
        assert headers["x-forwarded-proto"] == "https"
    finally:
        await client.close()


async def test_http2_off_leaves_the_preface_to_http11(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region = await start_region(aiohttp_server, "r1")
    service = await start_router(make_config([region.config()]), probe=probe_passes)
    resp = await raw_exchange(service.proxy_port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert resp.status == 400
