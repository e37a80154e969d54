"""The config file watcher: asks for a reload when the file's content changes and settles.

It polls a digest of the file (no inotify: works the same on every filesystem, for files
replaced by rename as editors and config managers do) and waits for ``reload.debounce``
of stillness, since editors write in several steps. ``reload.watch`` and the debounce are
read from the serving config at every turn, so a reload can turn watching off or on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from router.config.diff import file_digest
from router.config.model import ReloadConfig


class ConfigWatcher:
    def __init__(
        self,
        path: str,
        settings: Callable[[], ReloadConfig],
        reload: Callable[[], Awaitable[object]],
    ) -> None:
        self.path = path
        self.settings = settings
        self.reload = reload
        self.seen = file_digest(path)  # content already read, good or bad: not reloaded again

    def __repr__(self) -> str:
        return f"<ConfigWatcher {self.path} seen={(self.seen or '-')[:12]}>"

    async def run(self) -> None:
        while True:
            settings = self.settings()
            await asyncio.sleep(max(0.05, min(settings.debounce_s, 1.0)))
            if not settings.watch:
                continue
            digest = file_digest(self.path)
            if digest is None or digest == self.seen:
                continue
            while True:  # debounce: editors write files in several steps
                await asyncio.sleep(settings.debounce_s)
                again = file_digest(self.path)
                if again == digest:
                    break
                digest = again
            if digest is None or digest == self.seen:
                continue
            await self.reload()
