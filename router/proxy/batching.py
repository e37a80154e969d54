"""Small writes held until the loop has handled every socket of its current poll.

Each ``write()`` that lands in a sleeping peer's socket pays, on the writer's CPU, for
waking that peer; across CPUs that is an inter-processor interrupt, and on a VM a VM exit.
On this project's 2-vCPU VM the wake-ups were 14% of the router's CPU under load
(``perf``: ``_raw_spin_unlock_irqrestore`` under ``sock_def_readable``, in the two
``uncork`` writes per request), against 9% of nginx's (docs/performance.md). Sent one by
one as each read is handled, the responses of one poll wake the client (wrk, a browser's
connection pool, another proxy) once each; held to the end of the poll and sent together,
the first wakes it and the rest land while it runs.

Held writes wait for a ``call_soon`` callback that runs before the loop polls again. At
low load a pass holds one read, and holding its write would only add a loop iteration to
the request's latency (8-10 us at c=1 on this VM, measured): so after a pass that wrote
for at most one read, the next pass writes its first response and its first request at
once and holds only the rest (Nagle's rule, per loop pass instead of per socket). A read
that leaves more than ``DEFER_MAX_BYTES`` corked is written at once, so a large body keeps
its backpressure (``pause_writing`` comes from the write).
"""

from __future__ import annotations

import asyncio
import logging

from router.proxy.busypoll import BusyPoll
from router.proxy.interfaces import ClientSide
from router.proxy.upstream import UpstreamConnection

log = logging.getLogger("router.proxy.batching")

DEFER_MAX_BYTES = 16 * 1024  # a read leaving more than this corked is written at once


class WriteBatch:
    """The connections whose corked writes wait for the end of this pass of the loop."""

    __slots__ = (
        "busy",
        "client_written",
        "clients",
        "held",
        "in_pass",
        "largest",
        "loop",
        "passes",
        "poll",
        "scheduled",
        "upstream_written",
        "upstreams",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.poll = BusyPoll(loop)  # keeps the loop awake briefly after a pass (0: off)
        self.clients: list[ClientSide] = []
        self.upstreams: list[UpstreamConnection] = []
        self.scheduled = False
        # This pass has written a response / a request already: the next ones are held.
        self.client_written = False
        self.upstream_written = False
        self.in_pass = 0  # reads of this pass that left writes
        self.busy = False  # the last pass had more than one: hold this one's first too
        # What batching did (tests read them): flushes, connections written by them, and
        # the most written by one.
        self.passes = 0
        self.held = 0
        self.largest = 0

    def hold_client(self, client: ClientSide, corked_bytes: int) -> bool:
        """True: ``client``'s corked writes wait for the end of this pass
        (``flush_deferred``); False: the caller writes them now."""
        if self._hold(self.client_written, corked_bytes):
            self.clients.append(client)
            return True
        self.client_written = True
        return False

    def defer_upstream(self, conn: UpstreamConnection) -> None:
        """``conn.uncork()`` at the end of this pass, or now (see ``_hold``)."""
        if conn.deferred:
            return  # already held: the flush writes what was added since
        if not conn.corked:
            conn.uncork()  # nothing to write: drop the empty cork
        elif self._hold(self.upstream_written, conn.corked_bytes):
            conn.deferred = True
            self.upstreams.append(conn)
        else:
            self.upstream_written = True
            conn.uncork()

    def count_read(self) -> None:
        """A read whose writes went out at once (HTTP/2: its connection flushes its own
        frames) still counts toward the pass: for ``busy`` and for the polling after it."""
        self.in_pass += 1
        self._schedule()

    def _hold(self, written: bool, corked_bytes: int) -> bool:
        """Hold a read's writes unless they are a large body, or the first of their
        direction in a pass that follows a quiet one (``written``: this pass has written
        one already)."""
        self.in_pass += 1
        self._schedule()
        return (written or self.busy) and corked_bytes <= DEFER_MAX_BYTES

    def _schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)
            self.poll.read()

    def flush(self) -> None:
        self.scheduled = False
        self.client_written = self.upstream_written = False
        self.busy = self.in_pass > 1  # then the next pass holds its first writes too
        self.in_pass = 0
        self.poll.pass_ended(self.busy)
        upstreams, self.upstreams = self.upstreams, []
        clients, self.clients = self.clients, []
        count = len(upstreams) + len(clients)
        self.passes += 1
        self.held += count
        self.largest = max(self.largest, count)
        # Requests first: the regions start on theirs while the responses go out.
        for conn in upstreams:
            conn.deferred = False
            try:
                conn.uncork()
            except Exception:  # one broken transport must not hold the others' bytes
                log.exception("writing a held request to %r failed", conn)
        for client in clients:
            try:
                client.flush_deferred()
            except Exception:
                log.exception("writing a held response to %r failed", client)
