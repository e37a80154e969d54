"""The client side of an exchange, and a client connection as the sweeper sees it.

An ``Exchange`` talks to the side that asked for the request only through ``ClientSide``:
the HTTP/1.1 ``ClientConnection`` is one implementation, an HTTP/2 stream
(``router.proxy.h2stream.H2Stream``) another. ``ClientSide`` is a native base class, not a
``typing.Protocol``: compiled, mypyc looks a Protocol's members up generically
(bench/mypyc_protocol.py: 8.7x a native attribute read, 3.2x a native method call), and an
exchange and its upstream connection touch their client a dozen times per request. It
derives from ``asyncio.Protocol`` because ``ClientConnection`` is one (a class has one
base chain); for ``H2Stream`` those methods are unused no-ops. The core's sweeper and the
listener's drain see either connection as a ``ClientConnectionLike``, a Protocol: they
touch it once per sweep, not per request.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

# This module is in the proxy's bottom layer (it imports no other proxy module), so the
# exchange and the upstream connection appear as ``Any`` (router.proxy.exchange.Exchange,
# router.proxy.upstream.UpstreamConnection).
Exchange = Any
UpstreamConnection = Any


class ClientSide(asyncio.Protocol):
    """The response sink and request source of one exchange."""

    __slots__ = ("http11", "last_active", "peer", "writing_paused")

    peer: bytes  # the client's address (access log)
    http11: bool  # HTTP/1.1 framing rules apply to what ``write`` gets
    writing_paused: bool  # the client is not taking response bytes now
    last_active: float  # monotonic time of the last byte moved (idle sweeps)

    def write(self, data: bytes) -> None:
        """Response bytes: the head once, then body bytes, as the exchange framed them."""
        raise NotImplementedError

    def write_from(self, data: bytes, start: int) -> None:
        """``write(data[start:])``, without copying where the side can (a body as read)."""
        raise NotImplementedError

    def cork(self) -> None:
        """Hold writes until ``uncork`` (one write per upstream read)."""
        raise NotImplementedError

    def uncork(self) -> None:
        raise NotImplementedError

    def uncork_later(self) -> None:
        """``uncork`` at the end of the loop's pass over ready sockets, where the side
        batches writes (router.proxy.batching); at once where it does not."""
        self.uncork()

    def flush_deferred(self) -> None:
        """The batch's end-of-pass call for what ``uncork_later`` held."""
        self.uncork()

    def cork_upstream(self, conn: UpstreamConnection) -> None:
        """Hold writes to ``conn`` until the current client read is parsed."""
        raise NotImplementedError

    def pause_reading_for(self, reason: str) -> None:
        """Stop taking request bytes for ``reason`` (backpressure to the client)."""
        raise NotImplementedError

    def resume_reading_for(self, reason: str) -> None:
        raise NotImplementedError

    def exchange_finished(self, ex: Exchange, close: bool) -> None:
        """``ex`` is done; ``close``: the client side cannot be reused after it."""
        raise NotImplementedError

    def start_tunnel(
        self, conn: UpstreamConnection, upstream_rest: bytes, pending: list[bytes]
    ) -> None:
        """A WebSocket was accepted: splice ``conn`` to the client (HTTP/1.1 only)."""
        raise NotImplementedError


class ClientConnectionLike(Protocol):
    """A client connection as the core's sweeper and the listener's drain see it."""

    last_active: float

    @property
    def active(self) -> object | None:
        """An exchange in flight on this connection, if any."""

    @property
    def tunnel(self) -> object:
        """The spliced upstream of a WebSocket tunnel, if any (HTTP/1.1 only)."""

    def idle_timeout(self) -> None:
        """Nothing moved for ``timeouts.idle``."""

    def close(self) -> None: ...
