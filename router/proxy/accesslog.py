"""One JSON line per request (orjson), buffered, written to stdout."""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from router.proxy.exchange import Exchange


class AccessLogger:
    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self.stream = stream or sys.stdout.buffer

    def __call__(
        self, ex: Exchange, status: int, duration_s: float, aborted: bool, error: str | None
    ) -> None:
        line = {
            "ts": time.time(),
            "request_id": ex.request_id.decode("latin-1"),
            "client": ex.client.peer.decode("latin-1"),
            "method": ex.method.decode("latin-1"),
            "target": ex.request_line.split(b" ", 2)[1].decode("latin-1")[:2048],
            "status": status,
            "region": ex.region.id if ex.region is not None else None,
            "attempts": ex.attempts,
            "duration_ms": round(duration_s * 1000.0, 3),
        }
        if aborted:
            line["aborted"] = True
        if error:
            line["router_error"] = error
        self.stream.write(orjson.dumps(line) + b"\n")

    def flush(self) -> None:
        self.stream.flush()
