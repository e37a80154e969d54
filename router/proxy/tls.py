"""TLS termination: SSL contexts built from ``tls``, picked by SNI, swapped on reload.

The listener is bound once with a *front* context; its SNI callback switches a handshake to
the context of the certificate SNI picked from the current set, so a reload only replaces
that set (and refreshes the front in place): connections already open keep their session,
and nothing is re-bound. OpenSSL takes some settings from the context the
connection started with (the minimum version, the client-verify mode) and others from the
one it switched to (ALPN, the client CA store, the certificate), so every context, the
front one included, carries all of them.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass

from router.config.edge import certificate_notes
from router.config.loader import TlsConfig
from router.proxy.tlsio import TlsTransport

log = logging.getLogger("router.proxy.tls")

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _warn_expiry(tls: TlsConfig) -> None:
    for note in certificate_notes(tls, time.time()):
        log.warning("tls: %s", note)


def alpn_protocols(http2: bool) -> list[str]:
    """What ALPN offers, in server preference order.

    ``h2`` only once the HTTP/2 front end exists and ``http2.enabled`` asks for it: offering
    it without speaking it would break every h2-capable client.
    """
    return ["h2", "http/1.1"] if http2 else ["http/1.1"]


def _context(tls: TlsConfig, cert: str | None, key: str | None, http2: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.set_alpn_protocols(alpn_protocols(http2))
    # No renegotiation, prefer our cipher order, ECDHE keys not reused (the defaults on
    # recent Pythons; stated so an older OpenSSL build cannot differ).
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.client_ca is not None:
        ctx.load_verify_locations(cafile=tls.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


@dataclass(frozen=True, slots=True)
class CertificateSet:
    """The contexts of one ``tls`` config: exact names, wildcard suffixes, the default."""

    tls: TlsConfig
    default: ssl.SSLContext
    exact: Mapping[str, ssl.SSLContext]
    wildcard: Mapping[str, ssl.SSLContext]  # "example.com" for "*.example.com"

    def pick(self, server_name: str | None) -> ssl.SSLContext:
        """The context for an SNI name: an exact SAN, else a one-label wildcard, else default."""
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        ctx = self.exact.get(name)
        if ctx is not None:
            return ctx
        _, dot, parent = name.partition(".")
        if dot:
            ctx = self.wildcard.get(parent)
            if ctx is not None:
                return ctx
        return self.default

    def replacing(self, old: ssl.SSLContext, new: ssl.SSLContext) -> CertificateSet:
        """The same set with every use of ``old`` served by ``new``."""

        def swap(table: Mapping[str, ssl.SSLContext]) -> dict[str, ssl.SSLContext]:
            return {name: new if ctx is old else ctx for name, ctx in table.items()}

        default = new if self.default is old else self.default
        return CertificateSet(self.tls, default, swap(self.exact), swap(self.wildcard))


def build_certificates(tls: TlsConfig, *, http2: bool = False) -> CertificateSet:
    """Load every pair (raises ``ssl.SSLError``/``OSError`` on a bad one); earlier pairs win."""
    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    default: ssl.SSLContext | None = None
    for pair in tls.certificates:
        ctx = _context(tls, pair.cert, pair.key, http2)
        default = default or ctx
        for name in pair.names:
            if name.startswith("*."):
                wildcard.setdefault(name[2:], ctx)
            else:
                exact.setdefault(name, ctx)
    if default is None:
        raise ValueError("tls.certificates is empty")
    return CertificateSet(tls=tls, default=default, exact=exact, wildcard=wildcard)


class TlsTerminator:
    """The front context of the https listener and the certificate set it switches to.

    The front context is the first certificate's own context, kept up to date in place on
    reload, so a handshake for the default certificate needs no switch, and with a single
    certificate no SNI callback runs at all (a switch costs a Python call and a copy of the
    certificate state in OpenSSL: half the rate of resumed handshakes). When the front
    cannot be updated in place (a different ``client_ca``: a CA store can only grow), every
    handshake switches to the current set instead.
    """

    def __init__(self, tls: TlsConfig, *, http2: bool = False) -> None:
        self.http2 = http2
        self.certs = build_certificates(tls, http2=http2)
        self.front = self.certs.default
        self.front_current = True  # the front context holds the current default certificate
        self.handshake_timeout_s = tls.handshake_timeout_s
        self.reloads = 0
        self._set_callback()
        _warn_expiry(tls)

    def _set_callback(self) -> None:
        certs = self.certs
        contexts = (*certs.exact.values(), *certs.wildcard.values())
        switching = not self.front_current or any(c is not self.front for c in contexts)
        self.front.sni_callback = self._on_server_name if switching else None

    def _on_server_name(
        self,
        conn: ssl.SSLObject | ssl.SSLSocket | TlsTransport,
        server_name: str | None,
        _: ssl.SSLContext,
    ) -> None:
        ctx = self.certs.pick(server_name)
        if ctx is not self.front:
            conn.context = ctx

    def apply(self, tls: TlsConfig) -> bool:
        """Re-read the certificates for a new config; on failure the old ones keep serving.

        The config loader already checked every pair, so a failure here means a file changed
        again since: it is logged, and the next reload tries again.
        """
        old = self.certs.tls
        if tls == old:
            return False
        try:
            certs = build_certificates(tls, http2=self.http2)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("tls: certificates not reloaded, the previous ones keep serving: %s", exc)
            return False
        front = self.front
        # Settings OpenSSL reads from the front context, not the one switched to.
        front.minimum_version = _VERSIONS[tls.min_version]
        front.verify_mode = ssl.CERT_REQUIRED if tls.client_ca else ssl.CERT_NONE
        same_ca = (tls.client_ca, tls.client_ca_digest) == (old.client_ca, old.client_ca_digest)
        if self.front_current and (same_ca or old.client_ca is None):
            try:
                if tls.client_ca is not None and not same_ca:
                    front.load_verify_locations(cafile=tls.client_ca)
                first = tls.certificates[0]
                front.load_cert_chain(first.cert, first.key)
            except (OSError, ssl.SSLError) as exc:
                log.warning("tls: switching every handshake (%s)", exc)
                self.front_current = False
        else:
            self.front_current = False
        if self.front_current:
            certs = certs.replacing(certs.default, front)
        self.certs = certs
        self._set_callback()
        self.reloads += 1
        log.info("tls: %d certificate(s) loaded", len(tls.certificates))
        _warn_expiry(tls)
        return True

    def __repr__(self) -> str:
        names = len(self.certs.exact) + len(self.certs.wildcard)
        return (
            f"<TlsTerminator certificates={len(self.certs.tls.certificates)} names={names} "
            f"min={self.certs.tls.min_version} mtls={self.certs.tls.client_ca is not None} "
            f"front_current={self.front_current} reloads={self.reloads}>"
        )
