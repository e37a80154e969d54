"""The config file watcher on a real file: a change that settles asks for one reload;
content already seen (a reload read it) does not."""

from __future__ import annotations

import asyncio
from pathlib import Path

from router.config.diff import file_digest
from router.config.model import ReloadConfig
from router.control.watch import ConfigWatcher


async def test_a_settled_change_asks_for_one_reload_and_seen_content_none(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("a: 1\n")
    asked: asyncio.Queue[str | None] = asyncio.Queue()
    watcher: ConfigWatcher

    async def reload() -> None:
        digest = file_digest(str(path))
        watcher.seen = digest  # what Control.reload does once it has read the file
        await asyncio.sleep(0)  # let the test see the request before the next one
        asked.put_nowait(digest)

    settings = ReloadConfig(watch=True, debounce_s=0.05)
    watcher = ConfigWatcher(str(path), lambda: settings, reload)
    task = asyncio.get_running_loop().create_task(watcher.run())
    try:
        path.write_text("a: 2\n")
        assert await asyncio.wait_for(asked.get(), 5.0) == file_digest(str(path))
        # Seen content is not reloaded again; the next change is.
        path.write_text("a: 3\n")
        assert await asyncio.wait_for(asked.get(), 5.0) == file_digest(str(path))
        assert asked.empty()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
