"""TLS test helpers: certificates made at test time (trustme; no key is ever committed), a
router with ``listen.https`` in front of one region, and a small HTTPS client on raw asyncio
streams that reports what the handshake chose. The fixtures (``ca``, ``certs``,
``start_https``) are in tests/conftest.py."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
import yaml
from cryptography import x509
from pytest_aiohttp import AiohttpServer

from router.config.loader import load_config
from router.service import RouterService
from tests.backends import RawResponse, Region, read_response, start_region

HTTPS_LISTEN = {"proxy": "127.0.0.1:0", "admin": "127.0.0.1:0", "https": "127.0.0.1:0"}


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path

    def config(self) -> dict[str, str]:
        return {"cert": str(self.cert), "key": str(self.key)}


def issue(ca: trustme.CA, directory: Path, name: str, *hostnames: str) -> CertFiles:
    """A leaf for ``hostnames`` signed by ``ca``, as PEM files ``name.pem``/``name.key``."""
    leaf = ca.issue_cert(*hostnames)
    files = CertFiles(directory / f"{name}.pem", directory / f"{name}.key")
    write_leaf(leaf, files)
    return files


def write_leaf(leaf: trustme.LeafCert, files: CertFiles) -> None:
    files.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    files.key.write_bytes(leaf.private_key_pem.bytes())


def new_ca() -> trustme.CA:
    return trustme.CA(key_type=trustme.KeyType.ECDSA)


def ca_file(ca: trustme.CA, path: Path) -> Path:
    """``ca``'s certificate as a PEM file at ``path`` (a ``ca_file`` or ``client_ca``)."""
    ca.cert_pem.write_to_path(str(path))
    return path


@dataclass
class HttpsRouter:
    region: Region
    service: RouterService
    config_path: Path

    @property
    def port(self) -> int:
        port = self.service.https_port
        assert port is not None
        return port


StartHttps = Callable[..., Awaitable[HttpsRouter]]


async def start_https_router(
    aiohttp_server: AiohttpServer,
    start_router: Callable[..., Awaitable[RouterService]],
    directory: Path,
    certs: tuple[CertFiles, ...],
    tls: dict[str, Any] | None = None,
    **sections: Any,
) -> HttpsRouter:
    """A region behind a router with https, started from a config file (so reload works).

    ``tls`` adds to the section that lists ``certs``; ``sections`` override top-level keys.
    """
    region = await start_region(aiohttp_server)
    data: dict[str, Any] = {
        "listen": HTTPS_LISTEN,
        "access_log": False,
        "reload": {"watch": False},
        "strategy": "round_robin",
        "state_dir": str(directory / "state"),
        "health_check": {"path": "/health", "interval": "200ms", "timeout": "150ms"},
        "regions": [region.config()],
        "tls": {"certificates": [c.config() for c in certs], **(tls or {})},
        **sections,
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    service = await start_router(load_config(path), config_path=str(path))
    return HttpsRouter(region, service, path)


def client_context(
    ca: trustme.CA,
    *,
    alpn: list[str] | None = None,
    max_version: ssl.TLSVersion | None = None,
    client_cert: trustme.LeafCert | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version is not None:
        ctx.maximum_version = max_version
    if client_cert is not None:
        client_cert.configure_cert(ctx)
    return ctx


@dataclass
class HttpsResult:
    response: RawResponse
    names: tuple[str, ...]  # the server certificate's DNS SANs
    alpn: str | None
    version: str | None


async def https_get(
    port: int,
    ctx: ssl.SSLContext,
    server_name: str | None,
    path: str = "/echo",
    host: str = "localhost",
) -> HttpsResult:
    """One GET over a fresh TLS connection to 127.0.0.1:port with SNI ``server_name``."""
    reader, writer = await open_tls(port, ctx, server_name)
    try:
        sslobj = writer.get_extra_info("ssl_object")
        try:
            der = sslobj.getpeercert(binary_form=True)
        except ValueError as exc:
            # TLS 1.3: a server refusing the client's certificate sends its alert after the
            # client's handshake ended; read before this line, it leaves "handshake not done".
            raise ConnectionError(f"refused after the handshake: {exc}") from exc
        names = cert_names(der)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = await asyncio.wait_for(read_response(reader), 10)
        return HttpsResult(response, names, sslobj.selected_alpn_protocol(), sslobj.version())
    finally:
        writer.close()


async def open_tls(
    port: int, ctx: ssl.SSLContext, server_name: str | None = "localhost", timeout_s: float = 10
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to 127.0.0.1:port, handshake done; ``server_name`` None: no SNI."""
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name or ""),
        timeout_s,
    )


def cert_names(der: bytes) -> tuple[str, ...]:
    leaf = x509.load_der_x509_certificate(der)
    ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return tuple(ext.value.get_values_for_type(x509.DNSName))
