"""The composition root: ``region-router run | check | demo``; wires the data and admin planes.

This is the one module of ``router/`` allowed to import ``admin/``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

from admin import cluster as admin_cluster
from admin.app import create_app
from admin.status import STATUS_EXTRAS
from router import __version__
from router.config.check import check_command
from router.config.loader import (
    Config,
    ConfigError,
    config_notes,
    default_instance_id,
    is_loopback,
    load_config,
    resolve_config_path,
)
from router.control.core import Control
from router.health.checker import ProbeFn
from router.proxy.server import ProxyServer
from router.runtime import Runtime
from router.store.files import StateFormatError
from router.workers.supervisor import Supervisor, WorkerStartError, usable_cores

log = logging.getLogger("router")

EXIT_OK, EXIT_CONFIG, EXIT_START = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="region-router", description=__doc__)
    parser.add_argument("--version", action="version", version=f"region-router {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the proxy and admin listeners")
    run.add_argument("-c", "--config", help="config file (default: $ROUTER_CONFIG, ./config.yaml)")
    run.add_argument(
        "--workers",
        default=None,
        help="serve from N worker processes (N or auto = usable cores) under a supervisor "
        "that owns the control plane; default: one process does everything",
    )
    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("-c", "--config")
    demo = sub.add_parser("demo", help="local demo: three regions, traffic, failover")
    demo.add_argument("-c", "--config", help="config (default: ./config.yaml, else packaged)")
    demo.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until Ctrl-C")
    demo.add_argument(
        "--non-interactive", action="store_true", help="plain log lines instead of a live table"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "check":
        return check_command(args.config)
    if args.command == "demo":
        from router.demo.run import demo_command

        return int(demo_command(args.config, args.duration, interactive=not args.non_interactive))
    return run_command(args.config, args.workers)


def run_command(config_arg: str | None, workers: str | None) -> int:
    path = resolve_config_path(config_arg)
    try:
        config = load_config(path)
    except ConfigError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return EXIT_CONFIG
    if not config.admin.token and not is_loopback(config.listen.admin.host):
        print(
            f"listen.admin: {config.listen.admin} is not a loopback address and admin.token is "
            "empty; set a token (admin.token or ROUTER_ADMIN_TOKEN) or bind admin to loopback",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if workers is None:
        count = 0
    elif workers == "auto":
        count = usable_cores()
    elif workers.isdigit() and 1 <= int(workers) <= 256:
        count = int(workers)
    else:
        print(f"--workers: expected a number 1..256 or 'auto', got {workers!r}", file=sys.stderr)
        return EXIT_CONFIG
    for note in config_notes(config):
        log.warning("%s", note)
    import uvloop

    return uvloop.run(serve(config, config_path=path, workers=count))


class RouterService:
    """The whole router in this process: proxy listener, admin listener, runtime.

    Tests use it directly (ports 0 pick free ports; ``proxy_port``/``admin_port`` tell which).
    """

    def __init__(
        self,
        config: Config,
        *,
        probe: ProbeFn | None = None,
        config_path: str | None = None,
        workers: int = 0,
    ) -> None:
        """``workers`` 0: this process serves the proxy; N: N worker processes do."""
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.runtime = Runtime(
            config, self.loop, probe=probe, instance_id=default_instance_id(config)
        )
        self.control = Control(self.runtime, config_path=config_path)
        self.proxy = ProxyServer(self.runtime.core)
        self.supervisor: Supervisor | None = None
        if workers > 0:
            self.supervisor = Supervisor(self.runtime, workers)
            sup = self.supervisor
            self.runtime.traffic_sources = sup.traffic_sources
            self.runtime.readiness_checks.append(sup.ready)
            self.runtime.propagation_barriers.append(sup.wait_applied)
        self._runner: web.AppRunner | None = None
        self._admin_site: web.TCPSite | None = None

    async def start(self) -> None:
        """Bind both listeners and start background work; raises OSError when a bind fails.

        Persisted state is loaded first: StateFormatError (a newer format) before any bind.
        """
        await self.control.restore()
        listen = self.config.listen
        if self.supervisor is None:
            await self.proxy.start(listen.proxy.host, listen.proxy.port)
        app = create_app(self.control)
        if self.supervisor is not None:
            app[STATUS_EXTRAS].append(self.supervisor.status)
        if self.control.cluster is not None:
            admin_cluster.setup(app, self.control.cluster)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._admin_site = web.TCPSite(self._runner, listen.admin.host, listen.admin.port)
        try:
            await self._admin_site.start()
        except OSError:
            await self.proxy.drain(0)
            await self._runner.cleanup()
            raise
        await self.runtime.start()
        await self.control.start()
        if self.supervisor is not None:
            try:
                await self.supervisor.start(listen.proxy.host, listen.proxy.port)
            except (OSError, WorkerStartError):
                await self.control.stop()
                await self.runtime.stop()
                await self._runner.cleanup()
                raise

    @property
    def proxy_port(self) -> int:
        return self.supervisor.port if self.supervisor is not None else self.proxy.port

    @property
    def https_port(self) -> int | None:
        """The https listener's port (None without ``listen.https``)."""
        if self.supervisor is not None:
            return self.supervisor.https_port
        return self.proxy.https_port if self.proxy.tls is not None else None

    @property
    def admin_port(self) -> int:
        assert self._runner is not None
        server = self._runner.server
        assert server is not None
        for site in self._runner.sites:
            sock = site._server.sockets[0] if site._server else None  # type: ignore[attr-defined]  # aiohttp keeps the asyncio server private
            if sock is not None:
                return int(sock.getsockname()[1])
        raise RuntimeError("admin listener not started")

    async def stop(self, grace_s: float | None = None) -> bool:
        """Drain in-flight requests (up to the grace period) and close everything."""
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        if self.supervisor is not None:
            await self.supervisor.stop(grace)
            drained = True
        else:
            drained = await self.proxy.drain(grace)
        await self.control.stop()
        await self.runtime.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        return drained


async def serve(
    config: Config,
    *,
    config_path: str | None = None,
    workers: int = 0,
    shutdown: Callable[[], Awaitable[object]] | None = None,
    install_signals: bool = True,
) -> int:
    """Run until SIGTERM/SIGINT (or ``shutdown`` returns); then drain and return an exit code."""
    loop = asyncio.get_running_loop()
    service = RouterService(config, config_path=config_path, workers=workers)
    listen = config.listen
    stop = asyncio.Event()
    reload_asked = asyncio.Event()
    if install_signals:
        # Installed before start-up (which waits for workers): a signal that arrives
        # meanwhile must not kill the process with the default action.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload_asked.set)
    try:
        await service.start()
    except StateFormatError as exc:
        log.error("%s", exc)
        await service.control.store.close()
        return EXIT_CONFIG
    except OSError as exc:
        log.error(
            "cannot listen (proxy %s, https %s, admin %s): %s",
            listen.proxy,
            listen.https,
            listen.admin,
            exc,
        )
        return EXIT_START
    except WorkerStartError as exc:
        log.error("%s", exc)
        return EXIT_START
    if install_signals:
        loop.add_signal_handler(signal.SIGHUP, service.control.request_reload, "signal")
        if reload_asked.is_set():  # SIGHUP during start-up: reload now that we can
            service.control.request_reload("signal")
    log.info(
        "region-router %s: proxy on %s%s, admin on %s, %d regions, strategy %s",
        __version__,
        listen.proxy,
        f" and https on {listen.https}" if listen.https is not None else "",
        listen.admin,
        len(config.regions),
        config.strategy,
    )
    # Long-lived start-up objects never need the cyclic collector again.
    gc.collect()
    gc.freeze()
    waiters: list[asyncio.Task[bool]] = [loop.create_task(stop.wait())]
    if shutdown is not None:
        waiters.append(loop.create_task(_await(shutdown())))
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()
    log.info("shutting down: draining in-flight requests (grace %.1fs)", config.shutdown_grace_s)
    if not await service.stop():
        log.warning("grace period over: closed connections with requests in flight")
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return EXIT_OK


async def _await(aw: Awaitable[object]) -> bool:
    await aw
    return True
