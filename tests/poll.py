"""``eventually``: poll a condition until a deadline, the tests' alternative to sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(
    check: Callable[[], Awaitable[bool]],
    timeout_s: float = 5.0,
    what: str = "the condition",
    poll_s: float = 0.02,
) -> float:
    """Seconds until ``check()`` held; AssertionError after ``timeout_s``."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        await asyncio.sleep(poll_s)
    return time.monotonic() - started
