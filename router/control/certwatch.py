"""The certificate watcher: asks for a reload when the TLS files the config read change.

Renewal tools (certbot, cert-manager, a cron job) replace certificate and key files in
place without touching config.yaml; with ``reload.watch`` on, the router picks them up like
a config change. It compares the files' digests with those the serving config recorded when
it read them, waits for ``reload.debounce`` of stillness (a renewal writes the certificate
and the key one after the other), and asks once per new content: a bad pair is one failed
reload, not one a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from router.config.edge import current_tls_file_digests, tls_file_digests
from router.config.model import Config


class CertificateWatcher:
    def __init__(
        self, config: Callable[[], Config], reload: Callable[[], Awaitable[object]]
    ) -> None:
        self.config = config
        self.reload = reload
        self.tried: tuple[str, ...] | None = None  # content a reload was asked for already

    def __repr__(self) -> str:
        return f"<CertificateWatcher tried={self.tried is not None}>"

    async def run(self) -> None:
        while True:
            settings = self.config().reload
            await asyncio.sleep(max(0.05, min(settings.debounce_s, 1.0)))
            if not settings.watch:
                continue
            changed = self._changed()
            if changed is None:
                continue
            while True:  # debounce: the certificate and the key are written one by one
                await asyncio.sleep(settings.debounce_s)
                again = self._changed()
                if again == changed:
                    break
                changed = again
            if changed is None:
                continue
            self.tried = changed
            await self.reload()

    def _changed(self) -> tuple[str, ...] | None:
        """The files' digests when they differ from the serving config's and are new."""
        tls = self.config().tls
        now = current_tls_file_digests(tls)
        if now is None or now == tls_file_digests(tls) or now == self.tried:
            return None
        return now
