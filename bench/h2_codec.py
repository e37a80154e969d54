"""What an HTTP/2 library costs per request on the server side, before any I/O.

One client connection object and one server connection object talk through memory: for
each request the client sends a HEADERS frame (a typical proxied GET), the server parses it
(events), answers HEADERS + a 100 B DATA frame with END_STREAM, and the client parses that.
The server side's share is what a proxy pays per stream; the client side is timed too,
since a proxy speaking h2 to a region pays both. Paired, interleaved rounds (the machine
drifts), median of rounds.

    python -m bench.h2_codec [--requests 20000] [--rounds 5]

Also timed: the router's own server framing (router.proxy.h2wire.H2Framer, a jh2 client
talking to it; compiled when run from a tree built by bench/mypyc_build.sh), and the HPACK
codecs alone (decoding the request block, encoding the response head).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from types import ModuleType
from typing import Any

import hpack
from jh2 import _hazmat

from router.proxy import h2hpack
from router.proxy.h2frames import Header
from router.proxy.h2wire import H2Framer

REQUEST = [
    (":method", "GET"),
    (":scheme", "http"),
    (":authority", "api.example.com"),
    (":path", "/v1/models/resnet/infer?x=1"),
    ("user-agent", "bench-h2/1.0"),
    ("accept", "application/json"),
    ("x-request-id", "0123456789abcdef0123456789abcdef"),
]
RESPONSE = [(":status", "200"), ("content-type", "application/json"), ("content-length", "100")]
BODY = b"x" * 100


# The library's own header checks walk every field several times in Python; a proxy that
# validates fields itself (it must answer the RFC's errors its own way) can turn them off.
LEAN = {
    "validate_outbound_headers": False,
    "validate_inbound_headers": False,
    "normalize_outbound_headers": False,
    "normalize_inbound_headers": False,
}


def pair(lib: ModuleType, lean: bool) -> tuple[Any, Any]:
    conn = importlib.import_module(lib.__name__ + ".connection")
    config = importlib.import_module(lib.__name__ + ".config")
    options = LEAN if lean else {}
    client = conn.H2Connection(config.H2Configuration(client_side=True, **options))
    server = conn.H2Connection(config.H2Configuration(client_side=False, **options))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def run(lib: ModuleType, lean: bool, requests: int) -> tuple[float, float]:
    """Seconds per request: (server side, client side)."""
    client, server = pair(lib, lean)
    server_s = client_s = 0.0
    clock = time.perf_counter
    stream_id = 1
    for _ in range(requests):
        t0 = clock()
        client.send_headers(stream_id, REQUEST, end_stream=True)
        wire = client.data_to_send()
        t1 = clock()
        server.receive_data(wire)
        server.send_headers(stream_id, RESPONSE)
        server.send_data(stream_id, BODY, end_stream=True)
        wire = server.data_to_send()
        t2 = clock()
        client.receive_data(wire)
        client.acknowledge_received_data(len(BODY), stream_id)
        server.receive_data(client.data_to_send())
        t3 = clock()
        server_s += t2 - t1
        client_s += (t1 - t0) + (t3 - t2)
        stream_id += 2
        if stream_id > 2_000_000_000:
            client, server = pair(lib, lean)
            stream_id = 1
    return server_s / requests, client_s / requests


class _Answers:
    """A framer's handler answering each request at once, as a proxy with the response
    already in hand would (the router's own per-stream work is not timed here)."""

    def __init__(self) -> None:
        self.framer: H2Framer | None = None

    def on_request(self, stream_id: int, headers: list[Header], ended: bool) -> None:
        assert self.framer is not None
        self.framer.send_headers(stream_id, RESPONSE_BYTES, False)
        self.framer.send_data(stream_id, [BODY], True)
        self.framer.forget(stream_id)

    def on_data(self, stream_id: int, data: bytes, flow_len: int) -> None: ...
    def on_trailers(self, stream_id: int, headers: list[Header]) -> None: ...
    def on_end(self, stream_id: int) -> None: ...
    def on_reset(self, stream_id: int) -> None: ...
    def on_window(self, stream_id: int) -> None: ...
    def on_goaway(self) -> None: ...


RESPONSE_BYTES = [(k.encode(), v.encode()) for k, v in RESPONSE]


def run_framer(requests: int) -> tuple[float, float]:
    """Seconds per request of the router's framer (server side), a lean jh2 client."""
    conn = importlib.import_module("jh2.connection")
    config = importlib.import_module("jh2.config")
    client = conn.H2Connection(config.H2Configuration(client_side=True, **LEAN))
    handler = _Answers()
    server = H2Framer(
        handler,
        max_streams=100,
        max_header_bytes=65536,
        stream_window=256 * 1024,
        connection_window=16 * 1024 * 1024,
    )
    handler.framer = server
    client.initiate_connection()
    server.receive(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive(client.data_to_send())
    server_s = client_s = 0.0
    clock = time.perf_counter
    for i in range(requests):
        stream_id = 2 * i + 1
        t0 = clock()
        client.send_headers(stream_id, REQUEST, end_stream=True)
        wire = client.data_to_send()
        t1 = clock()
        server.receive(wire)
        wire = server.data_to_send()
        t2 = clock()
        client.receive_data(wire)
        client.acknowledge_received_data(len(BODY), stream_id)
        server.receive(client.data_to_send())
        t3 = clock()
        server_s += t2 - t1
        client_s += (t1 - t0) + (t3 - t2)
    return server_s / requests, client_s / requests


def hpack_costs(requests: int) -> dict[str, float]:
    """Seconds per call of each HPACK codec on the request block and the response head."""
    block = hpack.Encoder().encode(REQUEST)  # as a client's first request would be
    codecs: dict[str, Any] = {
        "decode request: hpack (pure Python)": lambda: hpack.Decoder().decode(block, raw=True),
        "decode request: jh2 _hazmat (compiled)": lambda: _hazmat.Decoder().decode(block, True),
        "encode response: hpack (pure Python)": lambda: hpack.Encoder().encode(RESPONSE_BYTES),
        "encode response: jh2 _hazmat (compiled)": lambda: _hazmat.Encoder().encode(
            [(k, v, False) for k, v in RESPONSE_BYTES]
        ),
        "encode response: router h2hpack (stateless)": lambda: h2hpack.encode(RESPONSE_BYTES),
    }
    costs = {}
    for label, call in codecs.items():
        t0 = time.perf_counter()
        for _ in range(requests):
            call()
        costs[label] = (time.perf_counter() - t0) / requests
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    variants = [
        (importlib.import_module(name), lean) for name in ("h2", "jh2") for lean in (False, True)
    ]
    results: dict[tuple[str, bool], list[tuple[float, float]]] = {
        (lib.__name__, lean): [] for lib, lean in variants
    }
    framer: list[tuple[float, float]] = []
    codecs: dict[str, list[float]] = {}
    for round_no in range(args.rounds):
        shift = round_no % len(variants)
        for lib, lean in variants[shift:] + variants[:shift]:
            results[lib.__name__, lean].append(run(lib, lean, args.requests))
        framer.append(run_framer(args.requests))
        for label, cost in hpack_costs(args.requests).items():
            codecs.setdefault(label, []).append(cost)
    print(f"median of {args.rounds} rounds x {args.requests} requests")
    print(f"{'library':<30} {'server µs/req':>14} {'client µs/req':>14}")
    for (name, lean), rounds in results.items():
        server = statistics.median(r[0] for r in rounds) * 1e6
        client = statistics.median(r[1] for r in rounds) * 1e6
        label = f"{name} {importlib.import_module(name).__version__}"
        label += ", header checks off" if lean else ""
        print(f"{label:<30} {server:>14.1f} {client:>14.1f}")
    server = statistics.median(r[0] for r in framer) * 1e6
    client = statistics.median(r[1] for r in framer) * 1e6
    compiled = not str(importlib.import_module(H2Framer.__module__).__file__).endswith(".py")
    label = "router h2wire" + (" (mypyc)" if compiled else " (pure)")
    print(f"{label:<30} {server:>14.1f} {'(jh2) ' + format(client, '.1f'):>14}")
    print(f"{'HPACK alone':<46} {'µs/call':>14}")
    for label, costs in codecs.items():
        print(f"{label:<46} {statistics.median(costs) * 1e6:>14.2f}")


if __name__ == "__main__":
    main()
