"""The proxy listeners' lifecycle: bind (plain, and https when configured), serve, drain."""

from __future__ import annotations

import asyncio
import socket

from router.config.loader import Config
from router.proxy.client import ClientConnection
from router.proxy.core import ProxyCore
from router.proxy.h2front import H2ClientConnection, Preface
from router.proxy.redirect import RedirectConnection
from router.proxy.tls import TlsTerminator
from router.proxy.tlslisten import TlsListener


class ProxyServer:
    def __init__(self, core: ProxyCore) -> None:
        self.core = core
        self._server: asyncio.Server | None = None
        self._https: TlsListener | None = None
        self.tls: TlsTerminator | None = None

    async def start(
        self,
        host: str,
        port: int,
        *,
        sock: socket.socket | None = None,
        reuse_port: bool = False,
        https_port: int | None = None,
    ) -> None:
        """Bind the plain listener, and the https one when ``listen.https`` is set.

        ``https_port`` replaces that address's port (workers: the one the supervisor
        reserved, which matters when the config says port 0).
        """
        loop = self.core.loop
        cfg = self.core.config
        if cfg.listen.https is not None and cfg.tls is not None:
            self.tls = TlsTerminator(cfg.tls, http2=cfg.http2.enabled)
            self.core.config_hooks.append(self._apply_tls)
            self._https = TlsListener(
                loop,
                cfg.listen.https.host,
                cfg.listen.https.port if https_port is None else https_port,
                context=self.tls.front,
                app_factory=self._secure,
                handshake_timeout_s=self.tls.handshake_timeout_s,
                max_head=self.core.max_header_bytes,
                reuse_port=reuse_port,
            )
        try:
            if sock is not None:
                self._server = await loop.create_server(self._plain, sock=sock, backlog=4096)
            else:
                self._server = await loop.create_server(
                    self._plain, host, port, backlog=4096, reuse_port=reuse_port or None
                )
        except OSError:
            if self._https is not None:
                self._https.close()
            raise

    def _plain(self) -> asyncio.Protocol:
        """A plain connection: the proxy, or (``tls.redirect_http``) a redirect to https."""
        tls = self.core.config.tls
        if tls is not None and tls.redirect_http and self._https is not None:
            return RedirectConnection(
                self.https_port, self.core.max_header_bytes, self.core.idle_timeout_s
            )
        if self.http2:
            return Preface(self.core)  # h2c with prior knowledge, else HTTP/1.1
        return ClientConnection(self.core)

    def _secure(self) -> asyncio.Protocol:
        """A TLS connection: HTTP/2 when ALPN picked h2, else HTTP/1.1."""
        if self.http2:
            return Preface(self.core, tls=True)
        return ClientConnection(self.core, tls=True)

    @property
    def http2(self) -> bool:
        """HTTP/2 is on for new connections (read per connection: a reload may flip it)."""
        return self.core.config.http2.enabled

    def _apply_tls(self, cfg: Config) -> None:
        if self.tls is not None and cfg.tls is not None:
            self.tls.apply(cfg.tls)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def https_port(self) -> int:
        assert self._https is not None
        return int(self._https.sockets[0].getsockname()[1])

    async def drain(self, grace_s: float) -> bool:
        """Stop accepting, let in-flight exchanges finish (up to grace); True when drained."""
        core = self.core
        for server in (self._server, self._https):
            if server is not None:
                server.close()
        core.draining = True
        for conn in list(core.connections):
            if isinstance(conn, H2ClientConnection):
                conn.goaway()  # no new streams; closes once its streams are done
            elif conn.active is None and conn.tunnel is None:
                conn.close()
        loop = core.loop
        deadline = loop.time() + grace_s
        while loop.time() < deadline:
            if not any(c.active is not None for c in core.connections):
                break
            await asyncio.sleep(0.05)
        drained = not any(c.active is not None for c in core.connections)
        for conn in list(core.connections):
            conn.close()
        core.pool.close()
        core.h2_pool.close()
        return drained
