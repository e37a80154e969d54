"""Keep the loop polling for a moment after a read, instead of letting it sleep at once.

At low load the loop sleeps in ``epoll_wait`` between every two reads: after it sends a
request to a region it sleeps until the answer comes, and after it sends the answer it
sleeps until the client's next request. On a VM each of those sleeps halts the vCPU, and
each wake-up costs an interrupt from the waking CPU plus a VM entry, with the caches cold
afterwards (other guests ran meanwhile). Measured on this project's VM at one connection:
the router spent 130-190 us of CPU per request, nginx 80-115, against 31 and 17 under load
(docs/performance.md). HAProxy's ``busy-polling`` answers the same problem by never
sleeping, at the price of a CPU at 100% forever.

``BusyPoll`` polls (a ``call_soon`` chain: while a callback is ready the loop polls with a
zero timeout) for up to ``window_s`` after the last read that wrote, then lets the loop
sleep. HTTP/1.1 reads (plain and TLS) and HTTP/2 reads count alike. It polls only after a
quiet pass of the loop (one read): under load the loop finds the next reads ready when it
polls anyway, and a short sleep is what lets several of them gather into one pass, whose
writes ``router.proxy.batching`` then sends together.

The window adapts the way the kernel's cpuidle ``haltpoll`` governor does: a quiet spell
no longer than ``max_s`` (which a longer window would have caught) doubles it, up to
``max_s``; a longer one halves it, down to 0. So traffic whose reads come more than
``max_s`` apart (a region 20 ms away, a client idle between clicks) soon stops the
polling, and the CPU burnt on it is at most about ``max_s`` per such gap while it decays.
"""

from __future__ import annotations

import asyncio
from time import monotonic


class BusyPoll:
    """The polling window of one event loop (``busy_poll`` in config.yaml; 0: off)."""

    __slots__ = (
        "caught",
        "last_s",
        "loop",
        "max_s",
        "polling",
        "slept",
        "stepping",
        "steps",
        "window_s",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, max_s: float = 0.0) -> None:
        self.loop = loop
        self.max_s = max_s
        self.window_s = 0.0  # how long to poll after a read; adapts within [0, max_s]
        self.polling = False  # keep the loop awake until the window has passed
        self.stepping = False  # a _step is ready (it ends the chain once polling is off)
        self.last_s = 0.0  # when the last read that wrote came in
        # What polling did (tests and docs read them): reads that came while polling,
        # reads that did not (the loop slept, or the pass before was busy), and polls made.
        self.caught = 0
        self.slept = 0
        self.steps = 0

    def configure(self, max_s: float) -> None:
        self.max_s = max_s
        self.window_s = min(self.window_s, max_s)

    def read(self) -> None:
        """A pass of the loop had a read that wrote (``WriteBatch``: once per pass)."""
        if self.max_s <= 0.0:
            return  # off: no clock read per pass
        now = monotonic()
        if self.polling:
            self.caught += 1
        else:
            self.slept += 1
            self._adapt(now - self.last_s)
        self.last_s = now

    def pass_ended(self, busy: bool) -> None:
        """The pass's writes are out (``WriteBatch.flush``); ``busy``: it had several reads."""
        if busy or self.window_s <= 0.0:
            self.polling = False  # a chain still running ends at its next step
        else:
            self.polling = True
            if not self.stepping:
                self.stepping = True
                self.loop.call_soon(self._step)

    def _adapt(self, quiet_s: float) -> None:
        """``quiet_s``: from the previous read to this one, which found the loop asleep."""
        if quiet_s <= self.max_s:
            self.window_s = min(self.max_s, max(2.0 * self.window_s, self.max_s / 4.0))
        else:
            window = self.window_s / 2.0
            self.window_s = window if window >= self.max_s / 8.0 else 0.0

    def _step(self) -> None:
        if self.polling and monotonic() - self.last_s < self.window_s:
            self.steps += 1
            self.loop.call_soon(self._step)
        else:
            self.polling = self.stepping = False
