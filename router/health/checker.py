"""Active health checking: one probe loop per region, thresholds, verdicts to the registry.

A probe is ``GET endpoint + path`` with ``User-Agent: region-router/<version>`` and
``X-Router-Instance``; it passes when it answers within ``timeout`` with a status in
``expected_status`` (and the body contains ``body_contains``, when set).
``unhealthy_threshold`` consecutive failures mark a region down, ``healthy_threshold``
successes mark it up, except the very first verdict: a new region serves after its first
passing probe (Envoy's start-up rule). A new region is probed at once; while a region is
changing state (a failure while up, a success while down) it is probed three times as
often, like HAProxy's ``fastinter``. Every pause gets +-``jitter``. Passing probes feed
their RTT to the latency estimate. The probe function and clocks are injectable, so tests
control outcomes and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from router import __version__
from router.config.loader import Endpoint, HealthCheckConfig, RegionConfig
from router.errors import UnknownRegion
from router.health.h2probe import Addresses, probe_h2
from router.state.registry import RegionRecord, Registry, Transition

log = logging.getLogger("router.health.checker")

BODY_CHECK_LIMIT_BYTES = 64 * 1024  # body_contains looks at this much of the body
FAST_INTERVAL_DIVISOR = 3  # interval / 3 while a region is changing state
PROBE_LATENCY_REPUBLISH = 0.10  # republish the snapshot when probe RTT moves by > 10%


@dataclass(frozen=True, slots=True)
class ProbeResult:
    ok: bool
    latency_s: float
    error: str = ""
    status: int = 0


ProbeFn = Callable[[RegionConfig, HealthCheckConfig], Awaitable[ProbeResult]]
TransitionSink = Callable[[Transition], None]
ResultSink = Callable[[str, ProbeResult], None]
VerdictSink = Callable[[str, bool], None]


def status_ok(status: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= status <= hi for lo, hi in ranges)


class _FollowingResolver(AbstractResolver):
    """aiohttp's resolver hook: probes connect to the addresses the proxy uses right now."""

    def __init__(self, addresses: Addresses) -> None:
        self._addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in await self._addresses(host)
        ]

    async def close(self) -> None:
        return None


class HttpProber:
    """The real probe: aiohttp GET with the configured timeout and expectations.

    Every probe opens a new connection (so none outlives ``dns.max_connection_age``), to
    the endpoint's current addresses when ``addresses`` is given (else the system resolver).
    """

    def __init__(self, instance_id: str, addresses: Addresses | None = None) -> None:
        self._addresses = addresses
        self._session: aiohttp.ClientSession | None = None
        self._headers = {
            "User-Agent": f"region-router/{__version__}",
            "X-Router-Instance": instance_id,
        }

    async def __call__(self, region: RegionConfig, hc: HealthCheckConfig) -> ProbeResult:
        if region.protocol == "h2":
            return ProbeResult(*await probe_h2(region, hc, self._headers, self._addresses))
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                connector=aiohttp.TCPConnector(
                    limit=0,
                    force_close=True,
                    use_dns_cache=self._addresses is None,
                    resolver=(
                        _FollowingResolver(self._addresses) if self._addresses is not None else None
                    ),
                ),
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
                    body = await _read_prefix(resp.content, BODY_CHECK_LIMIT_BYTES)
                    body_ok = hc.body_contains in body.decode("utf-8", "replace")
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
            self._session = None


async def _read_prefix(stream: aiohttp.StreamReader, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


@dataclass(slots=True)
class _Counter:
    successes: int = 0
    failures: int = 0


@dataclass(slots=True)
class _Probe:
    """One region's loop and what it has seen since it (re)started."""

    endpoint: Endpoint
    task: asyncio.Task[None]
    kick: asyncio.Event


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
        self._probes: dict[str, _Probe] = {}
        self._counters: dict[str, _Counter] = {}  # consecutive results since the last verdict
        self.first_round = asyncio.Event()
        self._first_pending: set[str] = set()
        self.last_results: dict[str, tuple[float, ProbeResult]] = {}  # wall time, result
        # Several instances: told each verdict, to weigh it against the others' (quorum.py).
        self.on_verdict: VerdictSink | None = None

    def __repr__(self) -> str:
        return (
            f"<HealthChecker regions={len(self._probes)} "
            f"first_round={'done' if self.first_round.is_set() else 'pending'}>"
        )

    def sync(self) -> None:
        """Start loops for new regions (probed at once), stop loops for removed ones.

        A region whose endpoint changed starts over: new counters, probed at once.
        """
        current = {rec.config.id: rec.config for rec in self.registry.records()}
        for region_id, p in list(self._probes.items()):
            rc = current.get(region_id)
            if rc is None or rc.endpoint != p.endpoint:
                p.task.cancel()
                del self._probes[region_id]
                self._counters.pop(region_id, None)
                self._first_pending.discard(region_id)
        loop = asyncio.get_running_loop()
        for region_id, rc in current.items():
            if region_id in self._probes:
                continue
            if not self.first_round.is_set():
                self._first_pending.add(region_id)
            self._probes[region_id] = _Probe(
                endpoint=rc.endpoint,
                task=loop.create_task(self._loop(region_id), name=f"health:{region_id}"),
                kick=asyncio.Event(),
            )
        if not self._first_pending:
            self.first_round.set()

    def check_now(self, region_id: str) -> None:
        """Probe this region at once (e.g. after an operator's recover)."""
        p = self._probes.get(region_id)
        if p is not None:
            p.kick.set()

    async def stop(self) -> None:
        tasks = [p.task for p in self._probes.values()]
        self._probes.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, region_id: str) -> None:
        while True:
            try:
                rec = self.registry.record(region_id)
            except UnknownRegion:
                return
            hc = self.registry.config.health_check
            result = await self._probe_once(rec.config, hc)
            p = self._probes.get(region_id)
            if p is None or asyncio.current_task() is not p.task:
                return  # removed or replaced while probing
            self.apply(region_id, result)
            delay = self.next_delay(region_id)
            p.kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(p.kick.wait(), delay)

    async def _probe_once(self, rc: RegionConfig, hc: HealthCheckConfig) -> ProbeResult:
        started = time.monotonic()
        try:
            # The probe enforces the timeout itself; this bounds a misbehaving probe function.
            return await asyncio.wait_for(self.probe(rc, hc), hc.timeout_s + 1.0)
        except TimeoutError:
            return ProbeResult(False, time.monotonic() - started, "timeout")
        except Exception as exc:  # a probe bug must not end the loop; it counts as a failure
            log.exception("health probe of %s raised", rc.id)
            return ProbeResult(False, time.monotonic() - started, f"probe error: {exc!r}")

    def next_delay(self, region_id: str) -> float:
        """Seconds until the next probe: interval (or interval/3 while changing), jittered."""
        hc = self.registry.config.health_check
        interval = hc.interval_s
        c = self._counters.get(region_id)
        try:
            rec: RegionRecord | None = self.registry.record(region_id)
        except UnknownRegion:
            rec = None
        if c is not None and rec is not None and _changing(rec, c):
            interval = max(hc.timeout_s, interval / FAST_INTERVAL_DIVISOR)
        jitter = interval * hc.jitter_percent / 100.0
        return max(0.01, interval + self.rng.uniform(-jitter, jitter))

    def apply(self, region_id: str, result: ProbeResult) -> None:
        """Count one probe result and hand a verdict to the registry when thresholds say so."""
        registry = self.registry
        try:
            rec = registry.record(region_id)
        except UnknownRegion:
            return
        hc = registry.config.health_check
        c = self._counters.get(region_id)
        if c is None:
            c = self._counters[region_id] = _Counter()
        self.last_results[region_id] = (self.wall(), result)
        if self.on_result is not None:
            self.on_result(region_id, result)
        now = self.clock()
        if result.ok:
            c.successes += 1
            c.failures = 0
            self._probe_latency(rec, result.latency_s, now)
        else:
            c.failures += 1
            c.successes = 0
        verdict: bool | None = None
        if result.ok:
            if not rec.probe_up:
                # A region that never served (new, or failed its first probes) or that an
                # operator just recovered needs one pass; one that went down needs the
                # healthy threshold.
                first = not rec.probed or not rec.ever_up
                if first or c.successes >= hc.healthy_threshold:
                    verdict = True
            elif rec.ejected_until is not None and not rec.eject_sticky:
                verdict = True  # a passing active check un-ejects
        elif not rec.probed or (rec.probe_up and c.failures >= hc.unhealthy_threshold):
            verdict = False
        if verdict is not None:
            reason = (
                "probe ok"
                if verdict
                else f"probe failed {c.failures}x: {result.error or 'unexpected answer'}"
            )
            t = registry.set_probe_verdict(region_id, verdict, now, reason, self.wall())
            if t is not None:
                self.on_transition(t)
            if self.on_verdict is not None:
                self.on_verdict(region_id, verdict)
        if region_id in self._first_pending:
            self._first_pending.discard(region_id)
            if not self._first_pending:
                self.first_round.set()

    def _probe_latency(self, rec: RegionRecord, latency_s: float, now: float) -> None:
        old = rec.probe_latency_s
        self.registry.set_probe_latency(rec.config.id, latency_s)
        if old is None or abs(latency_s - old) > PROBE_LATENCY_REPUBLISH * old:
            self.registry.publish(now)  # idle regions' scores follow their probe RTT


def _changing(rec: RegionRecord, c: _Counter) -> bool:
    """Some evidence against the current verdict, not yet enough to change it."""
    if not rec.probed:
        return False
    if rec.probe_up:
        return c.failures > 0
    return c.successes > 0
