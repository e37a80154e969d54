"""``region-router demo``: simulated regions, the router in front, traffic, and a live view.

Like router/service.py this is composition, not data plane: it runs the whole router in-process
(``RouterService``) between the regions and clients of router/demo/regions.py, takes one
region down midway and brings it back, and shows where the traffic goes (router/demo/view.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import signal
import sys
import tempfile
from collections import deque
from dataclasses import replace
from typing import TextIO

from router.config.loader import (
    Config,
    ConfigError,
)
from router.demo.observe import change_reason, read_frame
from router.demo.regions import (
    PROFILES,
    DemoRegion,
    TrafficGenerator,
    bindable,
    region_bind_host,
    stop_task,
    url_host,
)
from router.demo.script import Step, demo_config, load_demo_config, scenario, seconds
from router.demo.view import Frame, Outage, TableStyle, status_line, summary, table
from router.service import EXIT_CONFIG, EXIT_OK, EXIT_START, RouterService
from router.state.snapshot import RegionState, Snapshot

RATE_PER_S = 75.0
WINDOW_S = 2.0  # traffic share and latency are computed over this many recent seconds
READY_TIMEOUT_S = 10.0
CLEAR, HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[2J", "\x1b[H", "\x1b[K", "\x1b[J"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


def demo_command(config_path: str | None, duration: float, interactive: bool) -> int:
    """Run the demo for ``duration`` seconds (0: until Ctrl-C); the live table needs a TTY."""
    try:
        config, source = load_demo_config(config_path)
    except ConfigError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return EXIT_CONFIG
    if not config.regions:
        print(f"{source}: the demo needs at least one region in `regions`", file=sys.stderr)
        return EXIT_CONFIG
    live = interactive and sys.stdout.isatty()
    demo = Demo(config, source, duration_s=max(0.0, duration), live=live)
    import uvloop

    try:
        return uvloop.run(demo.run())
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return EXIT_OK


class Demo:
    def __init__(
        self,
        config: Config,
        source: str,
        *,
        duration_s: float,
        live: bool,
        out: TextIO | None = None,
        rate_per_s: float = RATE_PER_S,
    ) -> None:
        self.config = config
        self.source = source
        self.duration_s = duration_s
        self.live = live
        self.out = out or sys.stdout
        self.rate_per_s = rate_per_s
        encoding = (getattr(self.out, "encoding", None) or "").lower().replace("-", "")
        self.style = TableStyle(
            colour=live and "NO_COLOR" not in os.environ,
            bar_chars=("█", "░") if encoding == "utf8" else ("#", "."),
        )
        self.events: deque[str] = deque(maxlen=6)
        self.outages: list[Outage] = []
        self.regions: dict[str, DemoRegion] = {}
        self.service: RouterService | None = None
        self.traffic = TrafficGenerator("", rate_per_s=rate_per_s, window_s=WINDOW_S)
        self.urls: dict[str, str] = {}
        self.t0: float | None = None
        self._states: dict[str, RegionState] = {}
        self._next_step: Step | None = None
        self._stop = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Demo regions={len(self.regions)} live={self.live} {self.traffic!r}>"

    # -- time and output ---------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the traffic started (0 before)."""
        t0 = self.t0
        return 0.0 if t0 is None else asyncio.get_running_loop().time() - t0

    def write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def event(self, text: str) -> None:
        line = f"t={self.now():.1f}s: {text}"
        self.events.append(line)
        if not self.live:
            self.write(line)

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        # The demo reports state changes itself; the router's warnings (alerts, say) go to
        # stderr, or with the live table into its event lines, so they do not scroll it away.
        router_log = logging.getLogger("router")
        level, propagate = router_log.level, router_log.propagate
        router_log.setLevel(logging.WARNING)
        to_events = _EventLog(self)
        if self.live:
            router_log.addHandler(to_events)
            router_log.propagate = False
        try:
            with tempfile.TemporaryDirectory(prefix="region-router-demo-") as state_dir:
                return await self._run(state_dir)
        finally:
            router_log.removeHandler(to_events)
            router_log.setLevel(level)
            router_log.propagate = propagate
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _run(self, state_dir: str) -> int:
        traffic: asyncio.Task[None] | None = None
        try:
            if not await self._start(state_dir):
                return EXIT_START
            service = self.service
            assert service is not None
            await self._wait_ready(service)
            self.t0 = asyncio.get_running_loop().time()
            service.runtime.registry.subscribe(self._on_snapshot)
            if self.live:
                self.out.write(HIDE_CURSOR + CLEAR)
            else:
                self._print_intro()
            traffic = asyncio.get_running_loop().create_task(self.traffic.run())
            await self._main_loop()
            if self.live:
                self._draw()  # the last picture stays on the screen, above the summary
        finally:
            await stop_task(traffic)
            if self.service is not None:
                await self.service.stop(grace_s=1.0)
            for region in self.regions.values():
                await region.stop()
            if self.live:
                self.out.write(SHOW_CURSOR)
        t = self.traffic
        for line in summary(self.now(), t.ok, t.failed, t.failures, self.outages):
            self.write(line)
        return EXIT_OK

    async def _start(self, state_dir: str) -> bool:
        """Start the demo regions, then the router; False (after saying why) on failure."""
        endpoints: dict[str, str] = {}
        for i, rc in enumerate(self.config.regions):
            ep = rc.endpoint
            host = region_bind_host(ep.host)
            port = ep.port if ep.scheme == "http" and host == ep.host else 0
            region = DemoRegion(rc.id, PROFILES[i % len(PROFILES)], host, port, random.Random(i))
            self.regions[rc.id] = region
            try:
                try:
                    await region.start()
                except OSError:
                    if port == 0:
                        raise
                    self.event(f"note: {host}:{port} is busy; {rc.id} listens on a free port")
                    region.port = 0
                    await region.start()
            except OSError as exc:
                print(f"cannot start demo region {rc.id}: {exc}", file=sys.stderr)
                return False
            endpoints[rc.id] = f"http://{url_host(host)}:{region.port}"
        listen = self.config.listen
        proxy, admin = listen.proxy, listen.admin
        if not bindable(proxy.host, proxy.port):
            self.event(f"note: proxy address {proxy} is busy; the proxy listens on a free port")
            proxy = replace(proxy, port=0)
        if not bindable(admin.host, admin.port):
            self.event(f"note: admin address {admin} is busy; admin listens on a free port")
            admin = replace(admin, port=0)
        config = demo_config(self.config, endpoints, state_dir, proxy, admin)
        try:
            service = await self._start_service(config)
        except OSError:  # lost a race for a port: take any free ones
            proxy, admin = replace(proxy, port=0), replace(admin, port=0)
            config = demo_config(self.config, endpoints, state_dir, proxy, admin)
            try:
                service = await self._start_service(config)
            except OSError as exc:
                print(f"cannot start the router: {exc}", file=sys.stderr)
                return False
        self.service, self.config = service, config
        proxy_url = f"http://{url_host(proxy.host)}:{service.proxy_port}"
        admin_url = f"http://{url_host(admin.host)}:{service.admin_port}"
        self.urls = {
            "proxy": proxy_url,
            "admin": admin_url,
            "dashboard": f"{admin_url}/admin/dashboard",
        }
        self.traffic.base_url = proxy_url
        return True

    @staticmethod
    async def _start_service(config: Config) -> RouterService:
        service = RouterService(config)
        await service.start()
        return service

    async def _wait_ready(self, service: RouterService) -> None:
        """Until the first health-check round is done (or Ctrl-C, or a timeout)."""
        loop = asyncio.get_running_loop()
        waiters = [
            loop.create_task(service.runtime.health.first_round.wait()),
            loop.create_task(self._stop.wait()),
        ]
        await asyncio.wait(waiters, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
        await asyncio.wait(waiters)

    async def _main_loop(self) -> None:
        """Run the scenario's steps on time and refresh the view until the end or Ctrl-C."""
        loop = asyncio.get_running_loop()
        steps = scenario(list(self.regions), self.duration_s)
        self._next_step = next(steps, None)
        refresh_s = 0.5 if self.live else 1.0
        next_draw = 0.0 if self.live else 1.0
        stopper = loop.create_task(self._stop.wait())
        try:
            while not self._stop.is_set():
                t = self.now()
                if self.duration_s and t >= self.duration_s:
                    break
                while self._next_step is not None and t >= self._next_step.at_s:
                    await self._apply(self._next_step)
                    self._next_step = next(steps, None)
                if t >= next_draw:
                    if self.live:
                        self._draw()
                    else:
                        self.write(status_line(self.frame()))
                    next_draw += refresh_s
                wake = next_draw
                if self._next_step is not None:
                    wake = min(wake, self._next_step.at_s)
                if self.duration_s:
                    wake = min(wake, self.duration_s)
                await asyncio.wait([stopper], timeout=max(0.01, wake - t))
        finally:
            stopper.cancel()
            await asyncio.wait([stopper])

    async def _apply(self, step: Step) -> None:
        region = self.regions[step.region]
        if step.action == "down":
            self.event(f"taking {step.region} down (it stops answering: connections refused)")
            self.outages.append(Outage(step.region, self.now()))
            await region.go_down()
            return
        self.event(f"bringing {step.region} back (listening again on port {region.port})")
        try:
            await region.come_back()
        except OSError as exc:  # another program took the port meanwhile
            self.event(f"{step.region} cannot listen again: {exc}")
            return
        for outage in self.outages:
            if outage.region == step.region and outage.back_at is None:
                outage.back_at = self.now()

    # -- what the router did -----------------------------------------------------------

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        """Registry listener: report every region state change as an event line."""
        for r in snapshot.regions:
            before = self._states.get(r.id)
            self._states[r.id] = r.state
            if before is None or before is r.state:
                continue
            self.event(f"{r.id}: {before} -> {r.state}{self._reason(r.id, r.state)}")
            for o in self.outages:
                if o.region != r.id:
                    continue
                if o.out_at is None and not r.eligible:
                    o.out_at, o.out_state = self.now(), r.state.value
                elif o.back_at is not None and o.in_at is None and r.eligible:
                    o.in_at, o.in_state = self.now(), r.state.value

    def _reason(self, region_id: str, state: RegionState) -> str:
        assert self.service is not None
        return change_reason(self.service.runtime.registry.history, region_id, state)

    def frame(self) -> Frame:
        """Everything the view shows, read once from the router and the clients."""
        assert self.service is not None
        step = self._next_step
        return read_frame(
            self.service.runtime,
            self.traffic,
            self.regions,
            t_s=self.now(),
            window_s=WINDOW_S,
            next_step=step.describe() if step is not None else None,
            events=tuple(self.events),
        )

    # -- output ------------------------------------------------------------------------

    def _header(self, t_s: float) -> list[str]:
        mode = f"{seconds(self.duration_s)} s run" if self.duration_s else "until Ctrl-C"
        proxy = self.urls["proxy"]
        return [
            f"region-router demo  t={t_s:.0f}s ({mode})  config: {self.source}",
            f"  proxy      {proxy}    try: curl -i {proxy}/api/orders/1",
            f"  admin      {self.urls['admin']}    (/admin/status /admin/regions /metrics)",
            f"  dashboard  {self.urls['dashboard']}",
        ]

    def _draw(self) -> None:
        frame = self.frame()
        lines = table(frame, self._header(frame.t_s), self.style, window_s=WINDOW_S)
        self.out.write(HOME + "".join(f"{line}{CLEAR_LINE}\n" for line in lines) + CLEAR_BELOW)
        self.out.flush()

    def _print_intro(self) -> None:
        self.write(
            f"region-router demo: {len(self.regions)} regions on loopback, the router in front, "
            f"{self.rate_per_s:.0f} req/s of client traffic (config: {self.source})"
        )
        for region_id, region in self.regions.items():
            self.write(
                f"  region {region_id:<12} http://{url_host(region.host)}:{region.port}  "
                f"simulated {region.profile.describe()}"
            )
        self.write(f"proxy:     {self.urls['proxy']}")
        self.write(f"admin:     {self.urls['admin']}  (/admin/status /admin/regions /metrics)")
        self.write(f"dashboard: {self.urls['dashboard']}")
        if self.config.admin.token:
            self.write("admin needs `Authorization: Bearer <admin.token>` (ROUTER_ADMIN_TOKEN)")
        down, up = itertools.islice(scenario(list(self.regions), self.duration_s), 2)
        end = f"ends at t={seconds(self.duration_s)}s" if self.duration_s else "runs until Ctrl-C"
        self.write(
            f"plan: {down.region} goes down at t={seconds(down.at_s)}s and comes back at "
            f"t={seconds(up.at_s)}s; the demo {end}"
        )


class _EventLog(logging.Handler):
    """Router log records as the demo's event lines."""

    def __init__(self, demo: Demo) -> None:
        super().__init__(logging.WARNING)
        self.demo = demo

    def emit(self, record: logging.LogRecord) -> None:
        self.demo.event(f"{record.levelname.lower()}: {record.getMessage()}")
