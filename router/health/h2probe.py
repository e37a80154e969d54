"""Health probes of regions spoken to over HTTP/2 (``regions[].protocol: h2``).

One connection per probe (as the HTTP/1.1 prober does), one stream: ``grpc.health.v1.
Health/Check`` for ``health_check.grpc_service`` when it is set (healthy: SERVING and
grpc-status 0), else an HTTP/2 GET of ``health_check.path`` judged like the HTTP/1.1 one
(status ranges, ``body_contains``). With ``addresses`` (the proxy's resolver), a probe
connects to the endpoint's current DNS answer, one address per probe taking turns.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jh2.config import H2Configuration
from jh2.connection import H2Connection
from jh2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from jh2.exceptions import ProtocolError

from router.config.loader import HealthCheckConfig, RegionConfig

Addresses = Callable[[str], Awaitable[tuple[str, ...]]]  # host name -> addresses to try

HEALTH_CHECK = b"/grpc.health.v1.Health/Check"
_SERVING = 1
_BODY_LIMIT = 64 * 1024


def health_request(service: str) -> bytes:
    """A length-prefixed gRPC message: HealthCheckRequest{service} (field 1, string)."""
    name = service.encode()
    msg = b"\x0a" + _varint(len(name)) + name if name else b""
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def serving_status(body: bytes) -> int:
    """HealthCheckResponse.status from a length-prefixed message (0 UNKNOWN when absent)."""
    msg = body[5:]
    i = 0
    while i + 1 < len(msg):
        key, value = msg[i], msg[i + 1]
        if key == 0x08:  # field 1, varint (the enum fits one byte)
            return value
        i += 2
    return 0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Answer:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.done = False
        self.reset = False


async def _connect(
    region: RegionConfig, addresses: Addresses | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the next current address (a refused one gives way to the next)."""
    ep = region.endpoint
    ctx = None
    if ep.scheme == "https":
        ctx = ssl.create_default_context(cafile=region.ca_file)
        ctx.set_alpn_protocols(["h2"])
    hostname = ep.host if ctx is not None else None
    candidates = await addresses(ep.host) if addresses is not None else (ep.host,)
    last: OSError | None = None
    for address in candidates:
        try:
            return await asyncio.open_connection(
                address, ep.port, ssl=ctx, server_hostname=hostname
            )
        except ssl.SSLError:
            raise
        except OSError as exc:
            last = exc
    assert last is not None
    raise last


async def _exchange(
    region: RegionConfig,
    hc: HealthCheckConfig,
    headers: dict[str, str],
    addresses: Addresses | None,
) -> _Answer:
    ep = region.endpoint
    reader, writer = await _connect(region, addresses)
    try:
        conn: Any = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        grpc = hc.grpc_service is not None
        fields = [
            (b":method", b"POST" if grpc else b"GET"),
            (b":scheme", ep.scheme.encode()),
            (b":authority", ep.host_header.encode()),
            (b":path", HEALTH_CHECK if grpc else (ep.base_path + hc.path).encode()),
        ]
        fields += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        if grpc:
            fields += [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
            conn.send_headers(sid, fields)
            conn.send_data(sid, health_request(hc.grpc_service or ""), end_stream=True)
        else:
            conn.send_headers(sid, fields, end_stream=True)
        writer.write(conn.data_to_send())
        answer = _Answer()
        while not answer.done:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("closed before the answer ended")
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived | TrailersReceived):
                    for name, value in event.headers:
                        if name == b":status":
                            answer.status = int(value)
                        else:
                            answer.headers[name] = value
                elif isinstance(event, DataReceived):
                    if len(answer.body) < _BODY_LIMIT:
                        answer.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, StreamEnded | StreamReset | ConnectionTerminated):
                    answer.reset = not isinstance(event, StreamEnded)
                    answer.done = True
            writer.write(conn.data_to_send())
        return answer
    finally:
        writer.close()


async def probe_h2(
    region: RegionConfig,
    hc: HealthCheckConfig,
    headers: dict[str, str],
    addresses: Addresses | None = None,
) -> tuple[bool, float, str, int]:
    """(healthy, latency, why not, HTTP status) of one probe."""
    started = time.monotonic()
    try:
        answer = await asyncio.wait_for(_exchange(region, hc, headers, addresses), hc.timeout_s)
    except TimeoutError:
        return False, time.monotonic() - started, "timeout", 0
    except (OSError, ProtocolError) as exc:
        return False, time.monotonic() - started, f"{type(exc).__name__}: {exc}", 0
    latency = time.monotonic() - started
    if answer.reset:
        return False, latency, "stream reset", answer.status
    if hc.grpc_service is not None:
        grpc_status = answer.headers.get(b"grpc-status", b"")
        if grpc_status != b"0":
            return False, latency, f"grpc-status {grpc_status.decode() or 'missing'}", 200
        status = serving_status(answer.body)
        if status != _SERVING:
            return False, latency, f"serving status {status}", 200
        return True, latency, "", 200
    if not any(lo <= answer.status <= hi for lo, hi in hc.expected_status):
        return False, latency, f"status {answer.status}", answer.status
    if hc.body_contains is not None and hc.body_contains not in answer.body.decode(
        "utf-8", "replace"
    ):
        return False, latency, "body check failed", answer.status
    return True, latency, "", answer.status
