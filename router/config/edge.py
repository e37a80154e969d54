"""The edge sections of the config (CONTRACT section 10): ``tls`` and ``dns``.

Certificate files are read here, on every load and reload: a pair whose key does not match
its certificate, or a file that cannot be read, is a config error, so a bad reload changes
nothing. The SAN names (for SNI) and a digest of the files' bytes go into the config.
"""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
from typing import Literal

from cryptography import x509

from router.config.model import CertificatePair, DnsConfig, HostPort, TlsConfig
from router.config.units import show
from router.config.validate import FieldError, Fields, as_str


def tls_section(f: Fields, https: HostPort | None) -> TlsConfig | None:
    """``tls`` (required exactly when ``listen.https`` is set)."""
    if f.raw("tls") is None:
        if https is not None:
            f.error("tls", "required when listen.https is set")
        return None
    d = TlsConfig()
    with f.section("tls") as t:
        pairs: list[CertificatePair] = []
        for path, item in t.items("certificates"):
            pair = _certificate(Fields(item, path, t.errors))
            if pair is not None:
                pairs.append(pair)
        if not t.has("certificates") or (not pairs and t.clean):
            t.error("certificates", "at least one {cert, key} pair is required")
        client_ca = t.optional("client_ca", as_str(nonempty=True))
        ca_digest = ""
        if client_ca is not None:
            try:
                ca_digest = _digest(client_ca)
                ssl.create_default_context(cafile=client_ca)
            except (OSError, ssl.SSLError) as exc:
                t.error("client_ca", f"cannot load CA file {client_ca!r}: {_reason(exc)}")
        tls = TlsConfig(
            certificates=tuple(pairs),
            min_version=t.get("min_version", parse_min_version, d.min_version),
            client_ca=client_ca,
            client_ca_digest=ca_digest,
            redirect_http=t.flag("redirect_http", d.redirect_http),
            handshake_timeout_s=t.duration("handshake_timeout", d.handshake_timeout_s),
        )
    if https is None:
        f.error("tls", "listen.https is not set: nothing would serve TLS")
    return tls


def parse_min_version(value: object) -> Literal["1.2", "1.3"]:
    """``"1.2"`` or ``"1.3"`` (YAML may hand over the number 1.2)."""
    text = str(value) if isinstance(value, str | float) else ""
    if text == "1.2":
        return "1.2"
    if text == "1.3":
        return "1.3"
    raise ValueError(f'expected "1.2" or "1.3", got {show(value)}')


def _certificate(c: Fields) -> CertificatePair | None:
    with c:
        cert = c.required("cert", as_str(nonempty=True))
        key = c.required("key", as_str(nonempty=True))
    if cert is None or key is None or not c.clean:
        return None
    try:
        digest = pair_digest(cert, key)
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        pem = _read(cert)
        names = san_names(pem)
        not_after = x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()
    except (OSError, ssl.SSLError, ValueError) as exc:
        c.error(None, f"cannot load {cert!r} with {key!r}: {_reason(exc)}")
        return None
    if not names:
        c.error("cert", f"{cert!r} names no DNS subjectAltName (SNI could never pick it)")
        return None
    return CertificatePair(cert=cert, key=key, names=names, digest=digest, not_after=not_after)


def certificate_notes(tls: TlsConfig | None, now: float) -> list[str]:
    """Warnings worth a log line: certificates expired or expiring within 14 days."""
    notes: list[str] = []
    for i, pair in enumerate(tls.certificates if tls is not None else ()):
        days = (pair.not_after - now) / 86400.0
        if days < 0:
            notes.append(f"tls.certificates[{i}]: {pair.cert} expired {-days:.0f} day(s) ago")
        elif days < 14:
            notes.append(f"tls.certificates[{i}]: {pair.cert} expires in {days:.1f} day(s)")
    return notes


def san_names(pem: bytes) -> tuple[str, ...]:
    """The leaf certificate's DNS subjectAltName entries, lower-case, in file order."""
    leaf = x509.load_pem_x509_certificate(pem)
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(name.lower() for name in ext.value.get_values_for_type(x509.DNSName))


def pair_digest(cert: str, key: str) -> str:
    """sha256 of a certificate file's bytes and its key's (OSError when unreadable)."""
    return hashlib.sha256(_read(cert) + _read(key)).hexdigest()


def tls_file_digests(tls: TlsConfig | None) -> tuple[str, ...]:
    """The digests a config holds for the files it read: each pair's, then the client CA's."""
    if tls is None:
        return ()
    return (*(pair.digest for pair in tls.certificates), tls.client_ca_digest)


def current_tls_file_digests(tls: TlsConfig | None) -> tuple[str, ...] | None:
    """The same digests for the files as they are now (None while one cannot be read)."""
    if tls is None:
        return ()
    try:
        pairs = [pair_digest(pair.cert, pair.key) for pair in tls.certificates]
        ca = _digest(tls.client_ca) if tls.client_ca is not None else ""
    except OSError:
        return None
    return (*pairs, ca)


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _digest(path: str) -> str:
    return hashlib.sha256(_read(path)).hexdigest()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{exc.reason} ({exc.library})" if exc.library else str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def dns_section(f: Fields) -> DnsConfig:
    d = DnsConfig()
    with f:
        servers: list[HostPort] = []
        for path, item in f.items("nameservers"):
            try:
                servers.append(parse_nameserver(item))
            except ValueError as exc:
                f.errors.append(FieldError(path, str(exc)))
        return DnsConfig(
            refresh_s=f.duration("refresh", d.refresh_s),
            max_connection_age_s=f.duration("max_connection_age", d.max_connection_age_s),
            nameservers=tuple(servers),
        )


def parse_nameserver(value: object) -> HostPort:
    """``ip``, ``ip:port``, ``[v6]:port`` or a bare IPv6 address; port 53 by default."""
    bad = f'expected "ip[:port]", got {show(value)}'
    if not isinstance(value, str) or not value.strip():
        raise ValueError(bad)
    text = value.strip()
    host, port = text, 53
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(bad)
        host, port_text = inner, rest[1:] or "53"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        port_text = "53"
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(bad)
    port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{bad} (an IP address, not a host name)") from None
    return HostPort(host=host, port=port)
