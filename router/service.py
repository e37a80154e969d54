"""The composition root: ``RouterService`` wires the data plane, the control plane and the
admin plane into one running router; ``run_command`` is ``region-router run``.

This is the one module of ``router/`` allowed to import ``admin/``. ``router.cli`` (argparse)
and ``router.demo`` import it; nothing below them does.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from aiohttp import web

from admin import cluster as admin_cluster
from admin.app import create_app
from admin.status import STATUS_EXTRAS
from router import __version__
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
            self.runtime.serve_through(self.supervisor)
        self._runner: web.AppRunner | None = None
        # What start() started, undone by stop() in reverse order (or at once when a later
        # start-up step fails); the drain steps read the grace period from _grace_s.
        self._running = AsyncExitStack()
        self._grace_s = 0.0
        self._drained = True

    async def start(self) -> None:
        """Start everything or nothing: a failing step undoes the steps before it.

        Persisted state is loaded first: StateFormatError (a newer format) before any bind.
        Then the runtime and the control plane, the admin listener (OSError when its bind
        fails), and last the traffic: the proxy listeners, or the workers (WorkerStartError).
        Traffic starts last so that it stops first: stop() drains it while the rest runs.
        """
        await self.control.restore()
        listen = self.config.listen
        async with AsyncExitStack() as steps:
            await self.runtime.start()
            steps.push_async_callback(self.runtime.stop)
            await self.control.start()
            steps.push_async_callback(self.control.stop)
            self._runner = await self._start_admin()
            steps.push_async_callback(self._runner.cleanup)
            if self.supervisor is None:
                steps.push_async_callback(self._drain_proxy)  # also closes a half-bound start
                await self.proxy.start(listen.proxy.host, listen.proxy.port)
            else:
                await self.supervisor.start(listen.proxy.host, listen.proxy.port)
                steps.push_async_callback(self._stop_workers)
            self._running = steps.pop_all()

    async def _start_admin(self) -> web.AppRunner:
        app = create_app(self.control)
        if self.supervisor is not None:
            app[STATUS_EXTRAS].append(self.supervisor.status)
        if self.control.cluster is not None:
            admin_cluster.setup(app, self.control.cluster)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        listen = self.config.listen
        try:
            await web.TCPSite(runner, listen.admin.host, listen.admin.port).start()
        except OSError:
            await runner.cleanup()
            raise
        return runner

    async def _drain_proxy(self) -> None:
        self._drained = await self.proxy.drain(self._grace_s)

    async def _stop_workers(self) -> None:
        assert self.supervisor is not None
        await self.supervisor.stop(self._grace_s)  # each worker drains its own requests

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

    def reopen_logs(self) -> None:
        """SIGUSR1, as nginx does for logrotate: reopen the access log file by name."""
        self.runtime.reopen_logs()
        if self.supervisor is not None:
            self.supervisor.signal_workers(signal.SIGUSR1)

    async def stop(self, grace_s: float | None = None) -> bool:
        """Drain in-flight requests (up to the grace period) and close everything."""
        self._grace_s = self.config.shutdown_grace_s if grace_s is None else grace_s
        await self._running.aclose()
        return self._drained


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
    stop = asyncio.Event()
    with _Signals(loop, service, stop, enabled=install_signals) as signals:
        failed = await _start(service)
        if failed is not None:
            return failed
        signals.started()
        _log_started(config)
        # Long-lived start-up objects never need the cyclic collector again.
        gc.collect()
        gc.freeze()
        waiters: list[asyncio.Task[bool]] = [loop.create_task(stop.wait())]
        if shutdown is not None:
            waiters.append(loop.create_task(_await(shutdown())))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        grace_s = config.shutdown_grace_s
        log.info("shutting down: draining in-flight requests (grace %.1fs)", grace_s)
        if not await service.stop():
            log.warning("grace period over: closed connections with requests in flight")
    return EXIT_OK


class _Signals:
    """SIGTERM and SIGINT stop, SIGHUP reloads the config, SIGUSR1 reopens the logs.

    Installed before start-up (which waits for workers): a signal that arrives meanwhile
    must not kill the process with the default action. A SIGHUP then is kept, and acted
    on by ``started``; the handlers are removed on the way out.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        service: RouterService,
        stop: asyncio.Event,
        *,
        enabled: bool,
    ) -> None:
        self.loop, self.service, self.stop, self.enabled = loop, service, stop, enabled
        self.reload_asked = asyncio.Event()

    def __enter__(self) -> _Signals:
        if self.enabled:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(sig, self.stop.set)
            self.loop.add_signal_handler(signal.SIGHUP, self.reload_asked.set)
            self.loop.add_signal_handler(signal.SIGUSR1, self.service.reopen_logs)
        return self

    def started(self) -> None:
        """The control plane runs: SIGHUP reloads from now on (and now, if one came)."""
        if not self.enabled:
            return
        control = self.service.control
        self.loop.add_signal_handler(signal.SIGHUP, control.request_reload, "signal")
        if self.reload_asked.is_set():
            control.request_reload("signal")

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                self.loop.remove_signal_handler(sig)


async def _start(service: RouterService) -> int | None:
    """Start the service; None when it runs, else the exit code (after logging why)."""
    listen = service.config.listen
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
    return None


def _log_started(config: Config) -> None:
    listen = config.listen
    log.info(
        "region-router %s: proxy on %s%s, admin on %s, %d regions, strategy %s",
        __version__,
        listen.proxy,
        f" and https on {listen.https}" if listen.https is not None else "",
        listen.admin,
        len(config.regions),
        config.strategy,
    )


async def _await(aw: Awaitable[object]) -> bool:
    await aw
    return True
