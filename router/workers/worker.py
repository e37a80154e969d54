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
    worker = Worker(loop, workers)
    core = worker.build(await worker.connect(channel_fd))
    server = ProxyServer(core)
    try:
        await server.start(host, port, reuse_port=True, https_port=https_port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        return 2
    worker.install_signals()
    worker.channel.send(READY, {"worker": worker_id, "pid": os.getpid()})
    gc.collect()
    gc.freeze()
    if not await worker.serve(server):
        log.warning("grace period over: closed connections with requests in flight")
    return 0


class Worker:
    """One worker's life: wait for the first snapshot, proxy on it, report, then drain."""

    def __init__(self, loop: asyncio.AbstractEventLoop, workers: int) -> None:
        self.loop = loop
        self.workers = workers
        self.first: asyncio.Future[Snapshot] = loop.create_future()
        self.stop = asyncio.Event()  # SIGTERM, or the supervisor is gone: drain and exit
        self.holder: SnapshotHolder | None = None
        self.core: ProxyCore | None = None
        self.outcomes = OutcomeRecorder()
        self.access_log: AccessLogger | None = None
        # Created before connecting: the first snapshot may arrive during the connect call.
        self.channel = ChannelProtocol(self._on_message, self.stop.set)

    def _on_message(self, kind: bytes, payload: Any) -> None:
        if kind != SNAPSHOT:
            return
        assert isinstance(payload, Snapshot)
        holder, core = self.holder, self.core
        if holder is None:
            self.holder = SnapshotHolder(payload)
            self.first.set_result(payload)
        else:
            old, holder.current = holder.current, payload
            # Every message unpickles a fresh Config: compare by content hash.
            if core is not None and core.config.config_hash != payload.config.config_hash:
                core.apply_config(payload.config)
            if core is not None:
                core.snapshot_changed(old, payload)
        self.channel.send(ACK, payload.version)

    async def connect(self, channel_fd: int) -> Snapshot:
        """Connect the supervisor's channel; the first snapshot it sends."""
        chan_sock = socket.socket(fileno=channel_fd)
        await self.loop.connect_accepted_socket(lambda: self.channel, sock=chan_sock)
        return await self.first

    def build(self, snapshot: Snapshot) -> ProxyCore:
        """The proxy core on the pushed snapshots, reporting outcomes, with its access log."""
        assert self.holder is not None
        config = snapshot.config
        core = ProxyCore(self.holder, loop=self.loop, loads=LoadTable(), observer=self.outcomes)
        if config.access_log:
            # Each worker appends its own lines to the same file (O_APPEND keeps them whole).
            self.access_log = AccessLogger(self.loop, access_log_path(config))
            self.access_log.bind(core.stats)
            core.access_log = self.access_log.record
        core.selector.capacity_share = 1.0 / max(1, self.workers)
        self.core = core
        return core

    def install_signals(self) -> None:
        self.loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        if self.access_log is not None:
            self.loop.add_signal_handler(signal.SIGUSR1, self.access_log.reopen)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor handles Ctrl-C for us
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    async def serve(self, server: ProxyServer) -> bool:
        """Report and sweep until told to stop; then drain and close. False: not drained."""
        core, holder = self.core, self.holder
        assert core is not None and holder is not None
        tasks = [
            self.loop.create_task(self._report_loop()),
            self.loop.create_task(core.sweep_forever(), name="proxy-sweeper"),
        ]
        await self.stop.wait()
        drained = await server.drain(holder.current.config.shutdown_grace_s)
        await core.dns.close()
        self.channel.send(REPORT, _report(core, self.outcomes))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.access_log is not None:
            core.access_log = None
            self.access_log.close()
        await asyncio.sleep(0)  # let the last report leave
        self.channel.close()
        return drained

    async def _report_loop(self) -> None:
        assert self.core is not None
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            self.channel.send(REPORT, _report(self.core, self.outcomes))


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
