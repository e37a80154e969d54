"""One JSON line per request, built as bytes and written off the event loop.

The request path only formats a line and appends it to a batch: no syscall, no dict, no
JSON encoder. A batch goes to a writer thread when it reaches ``FLUSH_BYTES`` or when it
is ``FLUSH_INTERVAL_S`` old, so a request never waits for the log. The thread's queue is
bounded by ``MAX_QUEUED_BYTES``: when the sink is slow, full or blocked (a pipe nobody
reads), new batches are dropped and their lines counted in ``TrafficStats`` (rendered as
``router_access_log_dropped_total``) instead of stalling the loop or growing memory.

The sink is stdout (fd 1) or a file opened with ``O_APPEND`` (so worker processes can
share it line-atomically); ``reopen()`` reopens the file by name, for logrotate's SIGUSR1.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import sys
import threading
import time
from typing import IO, TYPE_CHECKING

import orjson

from router.metrics import TrafficStats

if TYPE_CHECKING:
    from router.proxy.exchange import Exchange

log = logging.getLogger("router.proxy.accesslog")

FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL_S = 1.0
MAX_QUEUED_BYTES = 1024 * 1024  # handed to the writer but not yet written
CLOSE_TIMEOUT_S = 2.0
TARGET_MAX = 2048

# Bytes that may stand inside a JSON string as they are: printable ASCII but '"' and '\'.
_NEEDS_ESCAPE = re.compile(rb"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_REOPEN = object()
_STOP = object()


def json_str(raw: bytes) -> bytes:
    """``raw`` (read as latin-1, like the old encoder) as a JSON string literal."""
    if _NEEDS_ESCAPE.search(raw) is None:
        return b'"%b"' % raw
    return orjson.dumps(raw.decode("latin-1"))


class _Sink:
    """Where the writer thread puts bytes: an fd it owns (a file) or a stream (stdout)."""

    def __init__(self, path: str | None, stream: IO[bytes] | None) -> None:
        self.path = path
        self.stream = stream
        self.fd = -1
        if path is not None:
            self.fd = _open_append(path)
        elif stream is None:
            try:
                self.fd = sys.stdout.fileno()
            except (AttributeError, OSError, ValueError):  # a replaced sys.stdout (tests)
                self.stream = sys.stdout.buffer

    def write(self, data: bytes) -> None:
        if self.stream is not None:
            self.stream.write(data)
            self.stream.flush()
            return
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def reopen(self) -> None:
        if self.path is None:
            return
        fd = _open_append(self.path)  # the new file first: a failure keeps the old one
        old, self.fd = self.fd, fd
        os.close(old)

    def close(self) -> None:
        if self.path is not None and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


class AccessLogger:
    """Called once per finished exchange (``ProxyCore.access_log``) on the loop's thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        path: str | None = None,
        *,
        stream: IO[bytes] | None = None,
        flush_bytes: int = FLUSH_BYTES,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
    ) -> None:
        self.loop = loop
        self.path = path
        self.stats = TrafficStats()  # replaced by the core's own (bind), so metrics see drops
        self.flush_bytes = flush_bytes
        self.flush_interval_s = flush_interval_s
        self.max_queued_bytes = max_queued_bytes
        self._sink = _Sink(path, stream)  # opened here: a bad path fails at start-up
        self._lines: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._queued = 0  # bytes handed to the writer, not yet written (under _lock)
        self._lost = 0  # lines the writer failed to write (under _lock)
        self._regions: dict[str, bytes] = {}
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def bind(self, stats: TrafficStats) -> None:
        """Count dropped lines in ``stats`` (the core's counters, which metrics render)."""
        stats.access_log_dropped += self.stats.access_log_dropped
        self.stats = stats

    # -- the request path ----------------------------------------------------------------

    def __call__(
        self, ex: Exchange, status: int, duration_s: float, aborted: bool, error: str | None
    ) -> None:
        region = ex.region
        if region is None:
            region_json = b"null"
        else:
            region_json = self._regions.get(region.id) or self._region_json(region.id)
        line = (
            b'{"ts":%r,"request_id":%b,"client":%b,"method":%b,"target":%b,"status":%d,'
            b'"region":%b,"attempts":%d,"duration_ms":%r'
            % (
                time.time(),
                json_str(ex.request_id),
                json_str(ex.client.peer),
                json_str(ex.method),
                json_str(ex.request_line.split(b" ", 2)[1][:TARGET_MAX]),
                status,
                region_json,
                ex.attempts,
                round(duration_s * 1000.0, 3),
            )
        )
        if aborted:
            line += b',"aborted":true'
        if error:
            line += b',"router_error":' + orjson.dumps(error)
        line += b"}\n"
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.flush_bytes:
            self.flush()
        elif self._timer is None:
            self._timer = self.loop.call_later(self.flush_interval_s, self._on_timer)

    def _region_json(self, region_id: str) -> bytes:
        encoded = orjson.dumps(region_id)
        if len(self._regions) < 1024:
            self._regions[region_id] = encoded
        return encoded

    # -- batches -------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Hand the batch to the writer, or drop it (counted) when the writer is behind."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            lost, self._lost = self._lost, 0
            lines, self._lines = self._lines, []
            size, self._size = self._size, 0
            if lines and self._queued + size > self.max_queued_bytes:
                lost += len(lines)
                lines = []
            elif lines:
                self._queued += size
        if lost:
            self.stats.access_log_dropped += lost
        if lines:
            self._queue.put((b"".join(lines), len(lines)))

    def reopen(self) -> None:
        """Reopen the file by name (after logrotate moved it); stdout: nothing to do."""
        self.flush()  # lines logged before the signal go to the old file
        self._queue.put(_REOPEN)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is buffered and stop the writer; gives up after ``timeout_s``."""
        self.flush()
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("access log: writer still blocked after %.1fs; lines lost", timeout_s)

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        failing = False
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._sink.close()
                return
            if item is _REOPEN:
                try:
                    self._sink.reopen()
                except OSError as exc:
                    log.error("access log: cannot reopen %s: %s", self.path, exc)
                continue
            assert isinstance(item, tuple)  # (bytes, line count) from flush()
            data: bytes = item[0]
            count: int = item[1]
            try:
                self._sink.write(data)
                failing = False
            except (OSError, ValueError) as exc:
                with self._lock:
                    self._lost += count
                if not failing:
                    log.error("access log: write failed, dropping lines: %s", exc)
                failing = True
            with self._lock:
                self._queued -= len(data)
