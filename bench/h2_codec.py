"""What an HTTP/2 library costs per request on the server side, before any I/O.

One client connection object and one server connection object talk through memory: for
each request the client sends a HEADERS frame (a typical proxied GET), the server parses it
(events), answers HEADERS + a 100 B DATA frame with END_STREAM, and the client parses that.
The server side's share is what a proxy pays per stream; the client side is timed too,
since a proxy speaking h2 to a region pays both. Paired, interleaved rounds (the machine
drifts), median of rounds.

    python -m bench.h2_codec [--requests 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from types import ModuleType
from typing import Any

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
    for round_no in range(args.rounds):
        shift = round_no % len(variants)
        for lib, lean in variants[shift:] + variants[:shift]:
            results[lib.__name__, lean].append(run(lib, lean, args.requests))
    print(f"median of {args.rounds} rounds x {args.requests} requests")
    print(f"{'library':<30} {'server µs/req':>14} {'client µs/req':>14}")
    for (name, lean), rounds in results.items():
        server = statistics.median(r[0] for r in rounds) * 1e6
        client = statistics.median(r[1] for r in rounds) * 1e6
        label = f"{name} {importlib.import_module(name).__version__}"
        label += ", header checks off" if lean else ""
        print(f"{label:<30} {server:>14.1f} {client:>14.1f}")


if __name__ == "__main__":
    main()
