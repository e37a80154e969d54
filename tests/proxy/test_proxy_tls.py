"""HTTPS regions: the router verifies the certificate (per-region CA file) and sends SNI."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from tests.backends import Region, probe_passes, raw_exchange
from tests.conftest import StartRouter, make_config
from tests.tls import CertFiles, ca_file


async def _tls_region(
    aiohttp_server: AiohttpServer, certs: tuple[CertFiles, CertFiles]
) -> tuple[Region, list[str | None]]:
    """A region serving https with ``certs``' default (localhost); the SNI names it saw."""
    region = Region("secure")
    names: list[str | None] = []
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs[0].cert, certs[0].key)

    def sni(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        names.append(name)

    ctx.sni_callback = sni
    app: web.Application = region.app()
    region.server = await aiohttp_server(app, ssl=ctx)
    return region, names


async def test_https_region_with_its_ca_file(
    aiohttp_server: AiohttpServer,
    start_router: StartRouter,
    ca: trustme.CA,
    certs: tuple[CertFiles, CertFiles],
    tmp_path: Path,
) -> None:
    region, sni_names = await _tls_region(aiohttp_server, certs)
    endpoint = f"https://localhost:{region.port}"
    trusted = ca_file(ca, tmp_path / "ca.pem")
    config = make_config(
        [{"id": "secure", "endpoint": endpoint, "ca_file": str(trusted)}],
        health_check={"path": "/health", "interval": "200ms", "timeout": "150ms"},
    )
    service = await start_router(config)
    resp = await raw_exchange(service.proxy_port, b"GET /tls?x=1 HTTP/1.1\r\nHost: front\r\n\r\n")
    assert resp.status == 200, resp.body
    seen = region.seen[-1]
    assert seen.raw_path == "/tls?x=1"
    assert seen.header("Host") == f"localhost:{region.port}"
    assert "localhost" in sni_names


async def test_https_region_with_an_untrusted_certificate_is_502(
    aiohttp_server: AiohttpServer, start_router: StartRouter, certs: tuple[CertFiles, CertFiles]
) -> None:
    region, _ = await _tls_region(aiohttp_server, certs)
    config = make_config(
        [{"id": "secure", "endpoint": f"https://localhost:{region.port}"}],  # no ca_file
        retries={"max_retries": 0},
    )
    service = await start_router(config, probe=probe_passes)
    resp = await raw_exchange(service.proxy_port, b"GET / HTTP/1.1\r\nHost: front\r\n\r\n")
    assert resp.status == 502
    assert resp.header("X-Router-Error") == "upstream_unreachable"
    assert region.seen == []
