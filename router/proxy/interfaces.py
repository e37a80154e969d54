"""What an exchange needs from its client side, as ``typing.Protocol``s (httpcore-style).

An ``Exchange`` talks to the side that asked for the request only through ``ClientSide``:
the HTTP/1.1 ``ClientConnection`` is one implementation, an HTTP/2 stream
(``router.proxy.h2stream.H2Stream``) another. Protocols cost nothing at run time.
"""

from __future__ import annotations

from typing import Any, Protocol

# This module imports no other proxy module (it is what breaks their cycles), so the
# exchange and the upstream connection appear as ``Any`` (router.proxy.exchange.Exchange,
# router.proxy.upstream.UpstreamConnection).
Exchange = Any
UpstreamConnection = Any


class ClientSide(Protocol):
    """The response sink and request source of one exchange."""

    peer: bytes  # the client's address (access log)
    http11: bool  # HTTP/1.1 framing rules apply to what ``write`` gets
    writing_paused: bool  # the client is not taking response bytes now
    last_active: float  # monotonic time of the last byte moved (idle sweeps)

    def write(self, data: bytes) -> None:
        """Response bytes: the head once, then body bytes, as the exchange framed them."""

    def cork(self) -> None:
        """Hold writes until ``uncork`` (one write per upstream read)."""

    def uncork(self) -> None: ...

    def cork_upstream(self, conn: UpstreamConnection) -> None:
        """Hold writes to ``conn`` until the current client read is parsed."""

    def pause_reading_for(self, reason: str) -> None:
        """Stop taking request bytes for ``reason`` (backpressure to the client)."""

    def resume_reading_for(self, reason: str) -> None: ...

    def exchange_finished(self, ex: Exchange, close: bool) -> None:
        """``ex`` is done; ``close``: the client side cannot be reused after it."""

    def start_tunnel(
        self, conn: UpstreamConnection, upstream_rest: bytes, pending: list[bytes]
    ) -> None:
        """A WebSocket was accepted: splice ``conn`` to the client (HTTP/1.1 only)."""


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
