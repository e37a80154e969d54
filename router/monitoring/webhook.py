"""Alert webhook delivery: a bounded queue drained by one background task, with retries.

``notify`` never waits: it queues the JSON body (dropping the oldest when the queue is
full, and counting it). The task POSTs bodies in order, each retried with jittered
exponential backoff up to ``attempts`` times; a body that still fails is dropped, logged
and counted. Nothing here runs on the proxy's request path.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from router import __version__

log = logging.getLogger("router.monitoring.webhook")

Sleep = Callable[[float], Awaitable[None]]


class WebhookNotifier:
    def __init__(
        self,
        url: Callable[[], str | None],
        *,
        attempts: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 15.0,
        timeout_s: float = 5.0,
        max_queue: int = 256,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.url = url  # read at delivery time, so a reload can change it
        self.attempts = attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self.sleep = sleep
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=max_queue)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.failed = 0  # bodies given up on after every attempt
        self.dropped = 0  # bodies pushed out of a full queue
        self.retries = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return (
            f"<WebhookNotifier queued={self._queue.qsize()} sent={self.sent} "
            f"failed={self.failed} dropped={self.dropped}>"
        )

    def notify(self, payload: dict[str, Any]) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            log.warning("alert webhook queue full; dropped the oldest notification")
        self._queue.put_nowait(payload)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="alert-webhook")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            payload = await self._queue.get()
            await self._deliver(payload)

    async def _deliver(self, payload: dict[str, Any]) -> None:
        body = orjson.dumps(payload)
        for attempt in range(self.attempts):
            url = self.url()
            if not url:
                return  # the webhook was removed by a reload
            error = await self._post(url, body)
            if error is None:
                self.sent += 1
                return
            self.last_error = error
            if attempt + 1 < self.attempts:
                self.retries += 1
                delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt)
                await self.sleep(delay * random.uniform(0.8, 1.2))
        self.failed += 1
        log.error(
            "alert webhook %s: giving up after %d attempts: %s",
            _origin(self.url() or ""),
            self.attempts,
            self.last_error,
        )

    async def _post(self, url: str, body: bytes) -> str | None:
        """POST once; None on a 2xx, else what went wrong."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": f"region-router/{__version__}"}
            )
        try:
            async with self._session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                allow_redirects=False,
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"status {resp.status}"
        except TimeoutError:
            return "timeout"
        except (aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def to_json(self) -> dict[str, Any]:
        return {
            "target": _origin(self.url() or ""),
            "queued": self._queue.qsize(),
            "sent": self.sent,
            "failed": self.failed,
            "dropped": self.dropped,
            "retries": self.retries,
            "last_error": self.last_error,
        }


def _origin(url: str) -> str:
    """scheme://host:port only: webhook paths and userinfo often carry secrets."""
    parts = urlsplit(url)
    if not parts.hostname:
        return ""
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{parts.hostname}{port}"
