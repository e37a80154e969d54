"""Active health checking: one probe loop per region, thresholds, verdicts to the registry.

A probe is ``GET endpoint + path`` with ``User-Agent: region-router/<version>`` and
``X-Router-Instance``. ``unhealthy_threshold`` consecutive failures mark a region down,
``healthy_threshold`` successes mark it up, except the very first verdict: a new region
serves after its first passing probe. While a region is changing state it is probed at a
faster interval. The probe function is injectable so tests control outcomes and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from router import __version__
from router.config import HealthCheckConfig, RegionConfig
from router.registry import Registry, Transition

log = logging.getLogger("router.health")


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    latency_s: float
    error: str = ""
    status: int = 0


ProbeFn = Callable[[RegionConfig, HealthCheckConfig], Awaitable[ProbeResult]]
TransitionSink = Callable[[Transition], None]
ResultSink = Callable[[str, ProbeResult], None]


def status_ok(status: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= status <= hi for lo, hi in ranges)


class HttpProber:
    """The real probe: aiohttp GET with the configured timeout and expectations."""

    def __init__(self, instance_id: str) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._headers = {
            "User-Agent": f"region-router/{__version__}",
            "X-Router-Instance": instance_id,
        }

    async def __call__(self, region: RegionConfig, hc: HealthCheckConfig) -> ProbeResult:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
            )
        url = region.endpoint.url + hc.path
        started = time.monotonic()
        try:
            async with self._session.get(
                url,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=hc.timeout_s),
                allow_redirects=False,
            ) as resp:
                body_ok = True
                if hc.body_contains is not None:
                    text = (await resp.content.read(64 * 1024)).decode("utf-8", "replace")
                    body_ok = hc.body_contains in text
                else:
                    await resp.read()
                latency = time.monotonic() - started
                if not status_ok(resp.status, hc.expected_status):
                    return ProbeResult(False, latency, f"status {resp.status}", resp.status)
                if not body_ok:
                    return ProbeResult(False, latency, "body check failed", resp.status)
                return ProbeResult(True, latency, "", resp.status)
        except TimeoutError:
            return ProbeResult(False, time.monotonic() - started, "timeout")
        except aiohttp.ClientError as exc:
            return ProbeResult(False, time.monotonic() - started, f"{type(exc).__name__}: {exc}")
        except OSError as exc:
            return ProbeResult(False, time.monotonic() - started, f"OSError: {exc}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@dataclass(slots=True)
class _Counter:
    successes: int = 0
    failures: int = 0


class HealthChecker:
    """Runs probe loops for every region in the registry, following membership changes."""

    def __init__(
        self,
        registry: Registry,
        probe: ProbeFn,
        *,
        on_transition: TransitionSink,
        on_result: ResultSink | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.probe = probe
        self.on_transition = on_transition
        self.on_result = on_result
        self.clock = clock
        self.wall = wall
        self.rng = rng or random.Random()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._counters: dict[str, _Counter] = {}
        self._kick: dict[str, asyncio.Event] = {}
        self.first_round = asyncio.Event()
        self._first_pending: set[str] = set()
        self._never_up: set[str] = set()
        self.last_results: dict[str, tuple[float, ProbeResult]] = {}  # wall time, result

    def sync(self) -> None:
        """Start loops for new regions, stop loops for removed ones (call after changes)."""
        current = {rec.config.id: rec.config for rec in self.registry.records()}
        for region_id in list(self._tasks):
            if region_id not in current:
                self._tasks.pop(region_id).cancel()
                self._counters.pop(region_id, None)
                self._first_pending.discard(region_id)
        for region_id in current:
            if region_id not in self._tasks:
                self._counters[region_id] = _Counter()
                self._never_up.add(region_id)
                self._kick[region_id] = asyncio.Event()
                if not self.first_round.is_set():
                    self._first_pending.add(region_id)
                self._tasks[region_id] = asyncio.get_running_loop().create_task(
                    self._loop(region_id), name=f"health:{region_id}"
                )
        if not self._first_pending:
            self.first_round.set()

    def check_now(self, region_id: str) -> None:
        """Probe this region at once (e.g. after an operator's recover)."""
        event = self._kick.get(region_id)
        if event is not None:
            event.set()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, region_id: str) -> None:
        while True:
            try:
                rec = self.registry.record(region_id)
            except KeyError:
                return
            hc = self.registry.config.health_check
            result = await self.probe(rec.config, hc)
            self._apply(region_id, result, hc)
            delay = self._next_delay(region_id, hc)
            kick = self._kick[region_id]
            kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(kick.wait(), delay)

    def _next_delay(self, region_id: str, hc: HealthCheckConfig) -> float:
        c = self._counters.get(region_id)
        interval = hc.interval_s
        # Changing state (some evidence either way but not yet a verdict): check faster.
        if c is not None and (
            0 < c.failures < hc.unhealthy_threshold or 0 < c.successes < hc.healthy_threshold
        ):
            interval = max(hc.timeout_s, interval / 3)
        jitter = interval * hc.jitter_percent / 100.0
        return max(0.01, interval + self.rng.uniform(-jitter, jitter))

    def _apply(self, region_id: str, result: ProbeResult, hc: HealthCheckConfig) -> None:
        registry = self.registry
        try:
            rec = registry.record(region_id)
        except KeyError:
            return
        c = self._counters.setdefault(region_id, _Counter())
        self.last_results[region_id] = (self.wall(), result)
        if self.on_result is not None:
            self.on_result(region_id, result)
        if result.ok:
            c.successes += 1
            c.failures = 0
            registry.set_probe_latency(region_id, result.latency_s)
        else:
            c.failures += 1
            c.successes = 0
        verdict: bool | None = None
        if result.ok:
            if region_id in self._never_up or not rec.probed:
                verdict = True  # a new region serves after its first passing probe
                self._never_up.discard(region_id)
            elif not rec.probe_up and c.successes >= hc.healthy_threshold:
                verdict = True
            elif rec.ejected_until is not None:
                verdict = True  # a passing active check un-ejects
        elif not rec.probed or (rec.probe_up and c.failures >= hc.unhealthy_threshold):
            verdict = False
        if verdict is not None:
            reason = "probe ok" if verdict else f"probe failed: {result.error}"
            t = registry.set_probe_verdict(region_id, verdict, self.clock(), reason, self.wall())
            if t is not None:
                self.on_transition(t)
        if region_id in self._first_pending:
            self._first_pending.discard(region_id)
            if not self._first_pending:
                self.first_round.set()
