"""A worker process: serves the proxy port from an inherited socket, driven by snapshots.

It owns no state of its own: the supervisor pushes routing snapshots over the channel and
the worker applies them between requests. It reports its counters, in-flight numbers and
passive outcomes back four times a second, so metrics, outlier detection and the latency
estimate in the supervisor see every worker's traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
from typing import Any

from router.config.loader import access_log_path
from router.proxy.accesslog import AccessLogger
from router.proxy.core import ProxyCore
from router.proxy.server import ProxyServer
from router.routing.load import LoadTable
from router.state.snapshot import Snapshot, SnapshotHolder
from router.workers.channel import ACK, READY, REPORT, SNAPSHOT, ChannelProtocol

log = logging.getLogger("router.workers.worker")
REPORT_INTERVAL_S = 0.25


class OutcomeRecorder:
    """Passive outcomes per region as runs: [[ok, count, kind], ...] (cheap per request)."""

    __slots__ = ("runs",)

    def __init__(self) -> None:
        self.runs: dict[str, list[list[Any]]] = {}

    def __call__(self, region_id: str, ok: bool, kind: str) -> None:
        runs = self.runs.get(region_id)
        if runs is None:
            self.runs[region_id] = [[ok, 1, kind]]
            return
        last = runs[-1]
        if last[0] == ok and last[2] == kind:
            last[1] += 1
        else:
            runs.append([ok, 1, kind])

    def take(self) -> dict[str, list[list[Any]]]:
        runs, self.runs = self.runs, {}
        return runs


async def run_worker(
    host: str,
    port: int,
    channel_fd: int,
    worker_id: int,
    workers: int = 1,
    https_port: int | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    # SIGUSR1 (reopen the access log) must not kill a worker before its handler is set.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    first: asyncio.Future[Snapshot] = loop.create_future()
    stop = asyncio.Event()
    holder: SnapshotHolder | None = None
    core: ProxyCore | None = None

    def on_message(kind: bytes, payload: Any) -> None:
        nonlocal holder
        if kind == SNAPSHOT:
            assert isinstance(payload, Snapshot)
            if holder is None:
                holder = SnapshotHolder(payload)
                first.set_result(payload)
            else:
                old, holder.current = holder.current, payload
                # Every message unpickles a fresh Config: compare by content hash.
                if core is not None and core.config.config_hash != payload.config.config_hash:
                    core.apply_config(payload.config)
                if core is not None:
                    core.snapshot_changed(old, payload)
            channel.send(ACK, payload.version)

    def on_lost() -> None:
        stop.set()  # the supervisor is gone: drain and exit

    # Created before connecting: the first snapshot may arrive during the connect call.
    channel = ChannelProtocol(on_message, on_lost)
    chan_sock = socket.socket(fileno=channel_fd)
    await loop.connect_accepted_socket(lambda: channel, sock=chan_sock)
    snapshot = await first
    assert holder is not None
    outcomes = OutcomeRecorder()
    config = snapshot.config
    core = ProxyCore(holder, loop=loop, loads=LoadTable(), observer=outcomes)
    access_log: AccessLogger | None = None
    if config.access_log:
        # Each worker appends its own lines to the same file (O_APPEND keeps them whole).
        access_log = AccessLogger(loop, access_log_path(config))
        access_log.bind(core.stats)
        core.access_log = access_log.record
    core.selector.capacity_share = 1.0 / max(1, workers)
    server = ProxyServer(core)
    try:
        await server.start(host, port, reuse_port=True, https_port=https_port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        return 2
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if access_log is not None:
        loop.add_signal_handler(signal.SIGUSR1, access_log.reopen)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor handles Ctrl-C for us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    channel.send(READY, {"worker": worker_id, "pid": os.getpid()})
    gc.collect()
    gc.freeze()

    async def report() -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            channel.send(REPORT, _report(core, outcomes))

    async def sweep() -> None:
        while True:
            await asyncio.sleep(0.1)
            core.sweep()

    tasks = [loop.create_task(report()), loop.create_task(sweep())]
    await stop.wait()
    drained = await server.drain(holder.current.config.shutdown_grace_s)
    await core.dns.close()
    channel.send(REPORT, _report(core, outcomes))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if access_log is not None:
        core.access_log = None
        access_log.close()
    await asyncio.sleep(0)  # let the last report leave
    channel.close()
    if not drained:
        log.warning("grace period over: closed connections with requests in flight")
    return 0


def _report(core: ProxyCore, outcomes: OutcomeRecorder) -> dict[str, Any]:
    return {
        "stats": core.stats,
        "inflight": {rid: load.inflight for rid, load in core.loads.items()},
        "outcomes": outcomes.take(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="router.workers.worker")
    parser.add_argument("--listen", required=True, help="host:port (SO_REUSEPORT)")
    parser.add_argument("--channel-fd", type=int, required=True)
    parser.add_argument("--id", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="how many workers share the port")
    parser.add_argument("--https-port", type=int, default=None, help="listen.https's port")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s worker-{args.id}: %(message)s",
        stream=sys.stderr,
    )
    import uvloop

    host, _, port = args.listen.rpartition(":")
    return uvloop.run(
        run_worker(
            host.strip("[]"), int(port), args.channel_fd, args.id, args.workers, args.https_port
        )
    )


if __name__ == "__main__":
    sys.exit(main())
