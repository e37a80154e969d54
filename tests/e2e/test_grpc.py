"""gRPC through the router: an HTTP/2 client (grpcio) to an h2 region (grpcio, generic
handlers, no codegen), trailers and status end to end, every call shape, cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from tests.backends import probe_passes
from tests.conftest import StartRouter, make_config

SERVICE = "test.Echo"


class Region:
    """A gRPC server on a free port, in its own threads."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
                "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
                "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
                "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
                "Fail": grpc.unary_unary_rpc_method_handler(self.fail),
                "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            },
        )
        self.server.add_generic_rpc_handlers((handlers,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata((("x-region", "g1"),))
        return b"echo:" + request

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(5):
            yield b"%b-%d" % (request, i)

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return b"|".join(requests)

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            yield request.upper()

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such model: " + request.decode())
        raise AssertionError("unreachable")

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        done = threading.Event()
        context.add_callback(done.set)
        if done.wait(10) and not context.is_active():
            self.cancelled.set()
        return b"late"

    def stop(self) -> None:
        self.server.stop(grace=None)


@pytest.fixture
def region() -> Iterator[Region]:
    r = Region()
    yield r
    r.stop()


async def _router(start_router: StartRouter, region: Region) -> int:
    config = make_config(
        [{"id": "g1", "endpoint": f"http://127.0.0.1:{region.port}", "protocol": "h2"}],
        http2={"enabled": True},
    )
    service = await start_router(config, probe=probe_passes)
    return service.proxy_port


def _calls(port: int) -> dict[str, Any]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary")
        reply, call = unary.with_call(b"hi", timeout=5)
        out: dict[str, Any] = {"unary": reply, "trailers": dict(call.trailing_metadata() or ())}
        out["server_stream"] = list(
            channel.unary_stream(f"/{SERVICE}/ServerStream")(b"s", timeout=5)
        )
        out["client_stream"] = channel.stream_unary(f"/{SERVICE}/ClientStream")(
            iter([b"a", b"b", b"c"]), timeout=5
        )
        out["bidi"] = list(
            channel.stream_stream(f"/{SERVICE}/Bidi")(iter([b"x", b"y", b"z"]), timeout=5)
        )
        try:
            channel.unary_unary(f"/{SERVICE}/Fail")(b"resnet", timeout=5)
        except grpc.RpcError as exc:
            out["fail"] = (exc.code(), exc.details())  # type: ignore[attr-defined]
    return out


async def test_every_call_shape_and_status_through_the_router(
    start_router: StartRouter, region: Region
) -> None:
    port = await _router(start_router, region)
    out = await asyncio.to_thread(_calls, port)
    assert out["unary"] == b"echo:hi"
    assert out["trailers"].get("x-region") == "g1"
    assert out["server_stream"] == [b"s-0", b"s-1", b"s-2", b"s-3", b"s-4"]
    assert out["client_stream"] == b"a|b|c"
    assert out["bidi"] == [b"X", b"Y", b"Z"]
    assert out["fail"] == (grpc.StatusCode.NOT_FOUND, "no such model: resnet")


async def test_cancellation_reaches_the_region(start_router: StartRouter, region: Region) -> None:
    port = await _router(start_router, region)

    def cancel() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            future = channel.unary_unary(f"/{SERVICE}/Slow").future(b"x", timeout=10)
            threading.Event().wait(0.5)  # let it reach the region
            future.cancel()

    await asyncio.to_thread(cancel)
    assert await asyncio.to_thread(region.cancelled.wait, 5)
