"""TLS test helpers: certificates made at test time (trustme; no key is ever committed) and
a small HTTPS client on raw asyncio streams that reports what the handshake chose."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509

from tests.backends import RawResponse, read_response


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
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=server_name or ""),
        10,
    )
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


def cert_names(der: bytes) -> tuple[str, ...]:
    leaf = x509.load_der_x509_certificate(der)
    ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return tuple(ext.value.get_values_for_type(x509.DNSName))
