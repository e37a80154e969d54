"""RouterService start-up is all or nothing: a step that fails undoes the ones before it."""

from __future__ import annotations

import asyncio
import socket

import pytest

from router.config.loader import Config
from router.config.model import HealthCheckConfig, RegionConfig
from router.health.checker import ProbeResult
from router.service import RouterService
from tests.backends import free_ports, probe_passes
from tests.conftest import make_config


class CountingProbe:
    """Passes every probe and counts them: probes that go on mean a leaked health checker."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, region: RegionConfig, hc: HealthCheckConfig) -> ProbeResult:
        self.calls += 1
        return await probe_passes(region, hc)


def _config(proxy: int, admin: int) -> Config:
    return make_config(
        [{"id": "r1", "endpoint": "http://127.0.0.1:9"}],
        listen={"proxy": f"127.0.0.1:{proxy}", "admin": f"127.0.0.1:{admin}"},
        health_check={"path": "/health", "interval": "50ms", "timeout": "40ms"},
    )


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def _probes_stopped(probe: CountingProbe) -> bool:
    # Absence of probes can only be seen over time: several 50 ms intervals pass unprobed.
    before = probe.calls
    await asyncio.sleep(0.3)
    return probe.calls == before


@pytest.mark.parametrize("taken", ["admin", "proxy"])
async def test_a_port_in_use_fails_start_and_leaves_nothing_running(
    taken: str, tmp_path: object
) -> None:
    proxy, admin = free_ports(2)
    config = _config(proxy, admin)
    probe = CountingProbe()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", admin if taken == "admin" else proxy))
        squatter.listen(1)
        service = RouterService(config, probe=probe)
        with pytest.raises(OSError):
            await service.start()
        # The listener that did bind is closed again, and no background work goes on.
        assert await _refused(proxy if taken == "admin" else admin)
        assert await _probes_stopped(probe)
        await service.stop(grace_s=0)  # harmless after a failed start
    # Everything was released: the same config starts on the same ports now.
    again = RouterService(config, probe=CountingProbe())
    await again.start()
    try:
        assert again.proxy_port == proxy and again.admin_port == admin
        assert not await _refused(proxy) and not await _refused(admin)
    finally:
        assert await again.stop(grace_s=1.0)
    assert await _refused(proxy) and await _refused(admin)
