"""The loop polls for a moment after a read instead of sleeping at once (router.proxy.busypoll).

Over real sockets: back-to-back requests find the loop still polling; reads that come far
apart shrink the window to nothing; ``busy_poll: 0`` never polls; and a router process
that has just served a burst goes back to sleep (no CPU burnt once traffic stops).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pytest_aiohttp import AiohttpServer

from router.proxy.busypoll import BusyPoll
from router.service import RouterService
from tests.backends import raw_connection, read_response, router_process, start_region
from tests.conftest import StartRouter, make_config
from tests.h2client import H2Client


async def router_polling(
    aiohttp_server: AiohttpServer, start_router: StartRouter, busy_poll: str
) -> tuple[RouterService, BusyPoll]:
    region = await start_region(aiohttp_server)
    service = await start_router(make_config([region.config()], busy_poll=busy_poll))
    return service, service.runtime.core.writes.poll


async def requests_in_a_row(port: int, paths: list[str], pause_s: float = 0.0) -> None:
    async with raw_connection(port) as (reader, writer):
        for path in paths:
            if pause_s:
                await asyncio.sleep(pause_s)
            writer.write(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode())
            response = await read_response(reader)
            assert response.status == 200, (path, response.status)


async def test_back_to_back_reads_find_the_loop_still_polling(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    # 10ms, the most allowed: even a slow CI machine answers within it.
    service, poll = await router_polling(aiohttp_server, start_router, "10ms")
    await requests_in_a_row(service.proxy_port, [f"/row/{n}" for n in range(40)])
    # Each request makes two reads (the request, then the region's answer); after the
    # first few, both come while the loop is still polling after the previous one.
    assert poll.caught >= 40, (poll.caught, poll.slept, poll.window_s)
    assert 0.0 < poll.window_s <= 0.01
    assert poll.steps > 0


async def test_reads_far_apart_shrink_the_window_to_nothing(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    service, poll = await router_polling(aiohttp_server, start_router, "1ms")
    await requests_in_a_row(service.proxy_port, [f"/row/{n}" for n in range(20)])
    assert poll.window_s > 0.0  # grown from nothing while reads came close together
    # A client that pauses 5 ms before each request, to a region that answers after 5 ms:
    # every read comes long after the window, so polling would only burn CPU.
    await requests_in_a_row(service.proxy_port, ["/delay/0.005"] * 4, pause_s=0.005)
    assert poll.window_s == 0.0, poll.window_s
    steps = poll.steps
    await requests_in_a_row(service.proxy_port, ["/delay/0.005"] * 10, pause_s=0.005)
    assert poll.steps == steps  # no polling at all any more
    assert not poll.polling


async def test_http2_reads_keep_the_loop_polling_too(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    region = await start_region(aiohttp_server)
    config = make_config([region.config()], busy_poll="10ms", http2={"enabled": True})
    service = await start_router(config)
    poll = service.runtime.core.writes.poll
    client = H2Client()
    await client.connect(service.proxy_port)
    try:
        for n in range(40):
            assert (await client.request(f"/h2/{n}")).status == 200
    finally:
        await client.close()
    # As over HTTP/1.1: the stream's request and the region's answer are both reads of a
    # pass (h2front's own, and the region connection's for an HTTP/2 stream).
    assert poll.caught >= 40, (poll.caught, poll.slept, poll.window_s)


async def test_busy_poll_0_never_polls(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    service, poll = await router_polling(aiohttp_server, start_router, "0")
    await requests_in_a_row(service.proxy_port, [f"/row/{n}" for n in range(20)])
    assert (poll.caught, poll.steps, poll.window_s, poll.polling) == (0, 0, 0.0, False)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def test_a_router_process_sleeps_again_once_traffic_stops(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    region = await start_region(aiohttp_server)
    config = {
        "regions": [region.config()],
        "health_check": {"path": "/health", "interval": "5s", "timeout": "1s"},
        "busy_poll": "10ms",  # the longest window: a loop that kept polling would show most
    }
    async with router_process(tmp_path, config) as router:
        await requests_in_a_row(router.proxy_port, [f"/burst/{n}" for n in range(300)])
        before = cpu_seconds(router.pid)
        await asyncio.sleep(1.0)  # measuring idle CPU: the sleep is the measurement
        idle_cpu = cpu_seconds(router.pid) - before
        # Polling forever would burn the whole second; asleep, the process uses ~nothing.
        assert idle_cpu < 0.1, idle_cpu
        await requests_in_a_row(router.proxy_port, ["/after"])  # and it wakes for the next


async def test_a_busy_pass_lets_the_loop_sleep() -> None:
    """Under load the loop gathers reads while it sleeps; polling would split them up."""
    poll = BusyPoll(asyncio.get_running_loop(), 0.01)
    poll.read()
    poll.read()  # two reads close together: the window opens
    poll.pass_ended(busy=False)
    assert poll.polling and poll.stepping
    await asyncio.sleep(0)
    assert poll.steps > 0  # the loop is polling
    poll.pass_ended(busy=True)  # a pass with several reads
    assert not poll.polling
    await asyncio.sleep(0)  # one loop iteration: the queued step runs and ends the chain
    assert not poll.stepping  # at once, not when the window has passed
    steps = poll.steps
    await asyncio.sleep(0.005)
    assert poll.steps == steps
