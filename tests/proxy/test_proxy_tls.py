"""HTTPS regions: the router verifies the certificate (per-region CA file) and sends SNI."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from tests.backends import Region, probe_passes, raw_exchange
from tests.conftest import StartRouter, make_config


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost: (ca, cert, key)."""
    ca_key, ca, key, csr, cert = (
        tmp_path / n for n in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem")
    )
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return ca, cert, key


async def _tls_region(
    aiohttp_server: AiohttpServer, cert: Path, key: Path
) -> tuple[Region, list[str | None]]:
    region = Region("secure")
    names: list[str | None] = []
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    def sni(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        names.append(name)

    ctx.sni_callback = sni
    app: web.Application = region.app()
    region.server = await aiohttp_server(app, ssl=ctx)
    return region, names


async def test_https_region_with_its_ca_file(
    aiohttp_server: AiohttpServer, start_router: StartRouter, certs: tuple[Path, Path, Path]
) -> None:
    ca, cert, key = certs
    region, sni_names = await _tls_region(aiohttp_server, cert, key)
    endpoint = f"https://localhost:{region.port}"
    config = make_config(
        [{"id": "secure", "endpoint": endpoint, "ca_file": str(ca)}],
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
    aiohttp_server: AiohttpServer, start_router: StartRouter, certs: tuple[Path, Path, Path]
) -> None:
    _, cert, key = certs
    region, _ = await _tls_region(aiohttp_server, cert, key)
    config = make_config(
        [{"id": "secure", "endpoint": f"https://localhost:{region.port}"}],  # no ca_file
        retries={"max_retries": 0},
    )
    service = await start_router(config, probe=probe_passes)
    resp = await raw_exchange(service.proxy_port, b"GET / HTTP/1.1\r\nHost: front\r\n\r\n")
    assert resp.status == 502
    assert resp.header("X-Router-Error") == "upstream_unreachable"
    assert region.seen == []
