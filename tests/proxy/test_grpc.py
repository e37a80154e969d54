"""gRPC through the router: an HTTP/2 client (grpcio) to an h2 region (grpcio, generic
handlers, no codegen), trailers and status end to end, every call shape, cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from tests.backends import (
    free_port,
    probe_passes,
    raw_exchange,
    router_process,
    start_region,
)
from tests.conftest import StartRouter, make_config
from tests.poll import eventually
from tests.tls import CertFiles, ca_file

SERVICE = "test.Echo"


class Region:
    """A gRPC server on a free port, in its own threads."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        self.cancelled = threading.Event()
        self.serving = True  # what grpc.health.v1.Health/Check answers
        self.health_checks = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        health = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {"Check": grpc.unary_unary_rpc_method_handler(self.check)},
        )
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
        self.server.add_generic_rpc_handlers((handlers, health))
        if credentials is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
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

    def check(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        # HealthCheckRequest{service: "test.Echo"}; HealthCheckResponse{status: 1 or 2}
        assert request == b"\x0a\x09test.Echo", request
        self.health_checks += 1
        return b"\x08\x01" if self.serving else b"\x08\x02"

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


async def test_h2_regions_are_health_checked_with_grpc_health(
    start_router: StartRouter, region: Region
) -> None:
    config = make_config(
        [{"id": "g1", "endpoint": f"http://127.0.0.1:{region.port}", "protocol": "h2"}],
        http2={"enabled": True},
        health_check={
            "path": "/health",
            "interval": "100ms",
            "timeout": "100ms",
            "healthy_threshold": 1,
            "unhealthy_threshold": 1,
            "grpc_service": "test.Echo",
        },
    )
    service = await start_router(config)  # the real prober

    def state() -> str:
        return str(service.runtime.holder.current.regions[0].state.value)

    async def until(want: str) -> None:
        async def holds() -> bool:
            return state() == want or (want == "healthy" and state() == "recovering")

        await eventually(holds, 5, f"region {want} (is {state()})")

    await until("healthy")
    assert region.health_checks > 0
    out = await asyncio.to_thread(_calls, service.proxy_port)
    assert out["unary"] == b"echo:hi"
    region.serving = False
    await until("unhealthy")
    region.serving = True
    await until("healthy")


async def test_h2_regions_without_grpc_service_get_an_http2_get(
    start_router: StartRouter, aiohttp_server: Any
) -> None:
    # The h2 region here is a second router with h2c on, fronting an HTTP/1.1 region.
    origin = await start_region(aiohttp_server, "origin")
    front = await start_router(
        make_config([origin.config()], http2={"enabled": True}), probe=probe_passes
    )
    config = make_config(
        [{"id": "h2r", "endpoint": f"http://127.0.0.1:{front.proxy_port}", "protocol": "h2"}],
        health_check={
            "path": "/health",
            "interval": "100ms",
            "timeout": "100ms",
            "healthy_threshold": 1,
            "unhealthy_threshold": 1,
        },
    )
    service = await start_router(config)

    async def state_is(want: str) -> bool:
        state = str(service.runtime.holder.current.regions[0].state.value)
        return state == want or (want == "healthy" and state == "recovering")

    await eventually(lambda: state_is("healthy"), 5, "h2 region healthy")
    origin.healthy = False  # /health answers 503 through the front router
    await eventually(lambda: state_is("unhealthy"), 5, "h2 region unhealthy")
    # and an HTTP/1.1 client's request goes to it over HTTP/2
    origin.healthy = True
    await eventually(lambda: state_is("healthy"), 5, "h2 region healthy again")
    resp = await raw_exchange(service.proxy_port, b"GET /via-h2 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert resp.status == 200
    assert origin.seen[-1].raw_path == "/via-h2"


async def test_grpc_suite_through_a_worker_mode_router(region: Region, tmp_path: Path) -> None:
    config = {
        "http2": {"enabled": True},
        "health_check": {
            "path": "/health",
            "interval": "200ms",
            "timeout": "200ms",
            "healthy_threshold": 1,
            "grpc_service": "test.Echo",
        },
        "regions": [{"id": "g1", "endpoint": f"http://127.0.0.1:{region.port}", "protocol": "h2"}],
    }
    async with router_process(tmp_path, config, workers=2) as router:
        for _ in range(3):  # new channels: new connections, spread over the workers
            out = await asyncio.to_thread(_calls, router.proxy_port)
            assert out["unary"] == b"echo:hi"
            assert out["server_stream"] == [b"s-0", b"s-1", b"s-2", b"s-3", b"s-4"]
            assert out["client_stream"] == b"a|b|c"
            assert out["bidi"] == [b"X", b"Y", b"Z"]
            assert out["fail"] == (grpc.StatusCode.NOT_FOUND, "no such model: resnet")


async def test_h2_region_over_tls(
    start_router: StartRouter, tmp_path: Path, ca: trustme.CA, certs: tuple[CertFiles, CertFiles]
) -> None:
    localhost = certs[0]  # the default: api.test and localhost
    trusted = ca_file(ca, tmp_path / "ca.pem")
    credentials = [(localhost.key.read_bytes(), localhost.cert.read_bytes())]
    region = Region(grpc.ssl_server_credentials(credentials))
    try:
        config = make_config(
            [
                {
                    "id": "g1",
                    "endpoint": f"https://localhost:{region.port}",
                    "protocol": "h2",
                    "ca_file": str(trusted),
                }
            ],
            http2={"enabled": True},
        )
        service = await start_router(config, probe=probe_passes)
        out = await asyncio.to_thread(_calls, service.proxy_port)
        assert out["unary"] == b"echo:hi"
        assert out["bidi"] == [b"X", b"Y", b"Z"]
        assert out["fail"] == (grpc.StatusCode.NOT_FOUND, "no such model: resnet")
    finally:
        region.stop()


async def test_router_made_errors_reach_grpc_clients_as_grpc_status(
    start_router: StartRouter,
) -> None:
    dead = free_port()  # nothing listens: every try is a connect failure
    config = make_config(
        [{"id": "g1", "endpoint": f"http://127.0.0.1:{dead}", "protocol": "h2"}],
        http2={"enabled": True},
    )
    service = await start_router(config, probe=probe_passes)

    def call() -> tuple[grpc.StatusCode, str, dict[str, str | bytes]]:
        with grpc.insecure_channel(f"127.0.0.1:{service.proxy_port}") as channel:
            try:
                channel.unary_unary(f"/{SERVICE}/Unary")(b"hi", timeout=5)
            except grpc.RpcError as exc:
                trailers = dict(exc.trailing_metadata() or ())  # type: ignore[attr-defined]
                return exc.code(), exc.details(), trailers  # type: ignore[attr-defined]
        raise AssertionError("the call succeeded")

    code, details, trailers = await asyncio.to_thread(call)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert details  # the router's message, percent-decoded by the client
    assert trailers.get("x-router-error")
