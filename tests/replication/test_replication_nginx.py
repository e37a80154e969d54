"""Replication against nginx with WebDAV PUT: a 50 MiB artifact, in bounded memory."""

from __future__ import annotations

import filecmp
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartRouter, make_config
from tests.stores import FINISHED, Nginx, admin_call, nginx_binary, wait_job, write_payload

NGINX = nginx_binary()
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (Debian package nginx; .ci/run installs it)"
)

MODEL = "/models/fraud/v3.bin"
SIZE = 50 * 1024 * 1024
MiB = 1024 * 1024


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    assert NGINX is not None
    server = Nginx(NGINX, tmp_path / "nginx", ["src", "t1", "t2"])
    server.start()
    yield server
    server.stop()


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
async def test_50_mib_reaches_two_nginx_targets_byte_identical_in_bounded_memory(
    nginx: Nginx, start_router: StartRouter, tmp_path: Path
) -> None:
    sites = list(nginx.sites.values())
    src = nginx.sites["src"]
    digest = write_payload(src.file(MODEL), SIZE)
    service = await start_router(
        make_config(
            [s.config() for s in sites],
            replication={"concurrency": 2, "attempts": 2, "backoff_base": "10ms"},
            state_dir=str(tmp_path / "state"),
        )
    )

    rss_before = rss_bytes()
    rss_peak = rss_before
    tracemalloc.start()
    try:
        status, job = await admin_call(
            service,
            "POST",
            "/admin/replications",
            {"kind": "model", "name": "fraud-model", "path": MODEL, "source": "src",
             "targets": "all"},
        )  # fmt: skip
        assert status == 202, job

        def finished(job: dict[str, Any]) -> bool:
            nonlocal rss_peak
            rss_peak = max(rss_peak, rss_bytes())  # sampled every poll while it runs
            return job["state"] in FINISHED

        done = await wait_job(service, job["id"], finished, timeout_s=60)
        _, peak_traced = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert done["state"] == "succeeded", done
    assert done["sha256"] == digest and done["size_bytes"] == SIZE
    for t in done["targets"]:
        assert t["state"] == "verified"
        assert t["verified_by"] == "read-back"  # nginx reports no digest: hashed back
        assert t["bytes"] == SIZE
    for name in ("t1", "t2"):
        copy = nginx.sites[name].file(MODEL)
        assert copy.stat().st_size == SIZE
        assert filecmp.cmp(src.file(MODEL), copy, shallow=False)
    # Memory does not grow with the artifact: chunks, never the whole 50 MiB.
    assert peak_traced < 16 * MiB, f"Python allocations peaked at {peak_traced / MiB:.1f} MiB"
    assert rss_peak - rss_before < 64 * MiB, f"RSS grew {(rss_peak - rss_before) / MiB:.1f} MiB"
    _, region = await admin_call(service, "GET", "/admin/regions/t2")
    assert region["artifacts"] == [f"fraud-model@{digest}"]
