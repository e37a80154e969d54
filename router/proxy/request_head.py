"""One HTTP/1.1 request head as a client connection reads it: fields in, an exchange out.

``RequestHead`` gathers what llhttp reports of a head (the target, each field), keeps the
fields the proxy reads (framing, Host, Connection, forwarding, affinity, geography) apart
from the ones it forwards as they are, refuses what must not reach a region
(``BadRequest``, ``BodyTooLarge``), routes the request to its plan and
builds its upstream head once, into the exchange. The connection's own protocol (the
parsing loop, pipelining, backpressure, tunnels, refusals) is
``router.proxy.client.ClientConnection``'s.
"""

from __future__ import annotations

from time import monotonic

from router.errors import BadRequest, BodyTooLarge
from router.proxy.core import ProxyCore
from router.proxy.headers import (
    FRAMING_LOOKALIKES,
    IDEMPOTENT_METHODS,
    connection_tokens,
    forwarded_fields,
    framing_field,
    named_headers,
    valid_host,
)
from router.proxy.interfaces import ClientSide
from router.proxy.paths import needs_normalizing, normalize_path, split_target
from router.proxy.response import ResponseRelay
from router.state.snapshot import RoutePlan, Snapshot


class RequestHead:
    """The head of one request, field by field; one per request."""

    __slots__ = (
        "affinity_value",
        "chunked",
        "conn_tokens",
        "content_length",
        "cookie",
        "expect",
        "geo_value",
        "host",
        "idempotency_key",
        "lines",
        "request_id",
        "size",
        "upgrade_value",
        "url",
        "xff",
    )

    def __init__(self) -> None:
        self.url = b""
        self.lines: list[bytes] = []  # fields forwarded as they are ("Name: value\r\n")
        self.size = 0  # target and field bytes so far, against limits.max_header_bytes
        self.host: bytes | None = None
        self.content_length = -1
        self.chunked = False
        self.conn_tokens: frozenset[bytes] | None = None
        self.upgrade_value: bytes | None = None
        self.xff: bytes | None = None
        self.request_id: bytes | None = None  # the client's X-Request-ID, if usable
        self.expect: bytes | None = None
        self.idempotency_key = False
        self.cookie: bytes | None = None
        self.affinity_value: bytes | None = None
        self.geo_value: bytes | None = None

    def add_special(self, name: bytes, lname: bytes, value: bytes, core: ProxyCore) -> None:
        """A field the proxy reads (``lname``, its lower-case name, is in
        ``core.interesting``); the client connection appends every other field to ``lines``
        itself, the common case, without a call."""
        if lname in core.watched:
            if lname == b"cookie":
                self.cookie = value
            elif lname == b"idempotency-key":
                self.idempotency_key = True
            elif lname == core.affinity_header:
                self.affinity_value = value
            if lname == core.geo_header:
                self.geo_value = value
            self.lines.append(b"%b: %b\r\n" % (name, value))
            return
        if lname == b"host":
            if self.host is not None:
                raise BadRequest("more than one Host header")
            self.host = value
        elif lname == b"content-length":
            self.content_length = int(value)
        elif lname == b"transfer-encoding":
            # llhttp frames by a final "chunked"; other codings would reach the region
            # without their label once re-framed, so refuse them (as nginx does).
            if value.strip().lower() != b"chunked":
                raise BadRequest("unsupported Transfer-Encoding (only chunked)")
            self.chunked = True
        elif lname == b"connection":
            tokens = connection_tokens(value)
            self.conn_tokens = tokens if self.conn_tokens is None else self.conn_tokens | tokens
        elif lname == b"upgrade":
            self.upgrade_value = value
        elif lname == b"x-forwarded-for":
            self.xff = value if self.xff is None else self.xff + b", " + value
        elif lname == b"x-request-id":
            if 0 < len(value) <= 200:
                self.request_id = value
        elif lname == b"expect":
            self.expect = value.lower()
        elif lname == b"te" and value.strip().lower() == b"trailers":
            self.lines.append(b"TE: trailers\r\n")
        elif lname in FRAMING_LOOKALIKES:
            raise BadRequest(f"header {name.decode('latin-1')!r} could be read as a framing header")
        # everything else in REQUEST_SPECIAL is hop-by-hop or rewritten: dropped

    @property
    def has_body(self) -> bool:
        return self.chunked or self.content_length > 0

    def check(self, method: bytes, version: str) -> None:
        """What no region may get: another HTTP version, a chunked HTTP/1.0 body, CONNECT."""
        if version != "1.1":
            if version != "1.0":
                raise BadRequest(f"unsupported HTTP version {version}")
            if self.chunked:
                # RFC 9112 6.1: the connection must close after it; refused, as nginx does.
                raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if method == b"CONNECT":
            raise BadRequest("CONNECT is not supported: this is a reverse proxy")

    def route(self, core: ProxyCore, http11: bool) -> tuple[bytes, bytes, Snapshot, RoutePlan]:
        """The origin-form target, the Host, and the routing state and plan it goes by."""
        target, authority = split_target(self.url)
        host = self.host
        if host is None:
            if http11:
                raise BadRequest("missing Host header")
            host = authority or b""
        elif not valid_host(host):
            raise BadRequest("invalid Host header")
        if authority is not None and authority != host.lower():
            raise BadRequest("absolute-form target names another host; this is not a forward proxy")
        snapshot: Snapshot = core.holder.current
        if core.has_routes or needs_normalizing(target):
            path = normalize_path(target)  # also rejects climbing above the root
        else:
            path = ""
        plan = core.plan_for(snapshot, host, path) if core.has_routes else snapshot.default_plan
        if self.content_length > core.max_body_bytes:
            raise BodyTooLarge(f"request body exceeds {core.max_body_bytes} bytes")
        return target, host, snapshot, plan

    def websocket(self, method: bytes, http11: bool) -> bool:
        """A request asking to upgrade becomes a tunnel only as a WebSocket handshake."""
        return (
            method == b"GET"
            and http11
            and not self.has_body
            and self.upgrade_value is not None
            and self.upgrade_value.strip().lower() == b"websocket"
        )

    def body_framing(self) -> bytes | None:
        """A head carrying only this request's body framing (llhttp skipped the body of an
        Upgrade request that is no tunnel: see ``ClientConnection._after_upgrade``)."""
        if not self.has_body:
            return None
        if self.chunked:
            return b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        return b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % self.content_length

    def exchange(
        self,
        core: ProxyCore,
        client: ClientSide,
        method: bytes,
        route: tuple[bytes, bytes, Snapshot, RoutePlan],
        *,
        keep_alive: bool,
        upgrade: bool,
        peer: bytes,
        proto: bytes,
    ) -> ResponseRelay:
        """The exchange for this head, with its upstream head built once."""
        target, host, snapshot, plan = route
        request_id = self.request_id or core.next_request_id()
        lines = self.lines
        if self.conn_tokens:
            named = named_headers(self.conn_tokens)
            if named:
                lines = [ln for ln in lines if ln.split(b":", 1)[0].lower() not in named]
        xff = peer if self.xff is None else self.xff + b", " + peer
        lines.append(forwarded_fields(xff, proto, host, request_id))
        lines.append(framing_field(self.chunked, self.content_length))
        if upgrade:
            lines.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
        lines.append(b"\r\n")
        return ResponseRelay(
            core,
            client,
            method=method,
            method_label=core.method_label(method),
            request_line=b"%b %b HTTP/1.1\r\n" % (method, target),
            head_common=b"".join(lines),
            upstream_host=host if core.preserve_host else None,
            chunked_request=self.chunked,
            has_body=self.has_body,
            keep_alive=keep_alive,
            upgrade=upgrade,
            idempotent=method in IDEMPOTENT_METHODS or self.idempotency_key,
            request_id=request_id,
            snapshot=snapshot,
            plan=plan,
            info=core.request_info(self.cookie, self.affinity_value, self.geo_value),
            now=monotonic(),
        )
