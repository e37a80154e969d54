"""The proxy listener's lifecycle: bind, serve, drain on shutdown."""

from __future__ import annotations

import asyncio
import socket

from router.proxy.client import ClientConnection
from router.proxy.core import ProxyCore


class ProxyServer:
    def __init__(self, core: ProxyCore) -> None:
        self.core = core
        self._server: asyncio.Server | None = None

    async def start(
        self, host: str, port: int, *, sock: socket.socket | None = None, reuse_port: bool = False
    ) -> None:
        loop = self.core.loop
        if sock is not None:
            self._server = await loop.create_server(
                lambda: ClientConnection(self.core), sock=sock, backlog=4096
            )
        else:
            self._server = await loop.create_server(
                lambda: ClientConnection(self.core),
                host,
                port,
                backlog=4096,
                reuse_port=reuse_port or None,
            )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def drain(self, grace_s: float) -> bool:
        """Stop accepting, let in-flight exchanges finish (up to grace); True when drained."""
        core = self.core
        if self._server is not None:
            self._server.close()
        core.draining = True
        for conn in list(core.connections):
            if conn.active is None and conn.tunnel is None:
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
        return drained
