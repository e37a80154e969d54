"""The access log over real sockets: its file, its timed flush, SIGUSR1 reopen, drop counting."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from pytest_aiohttp import AiohttpServer

from tests.backends import Region, free_ports, router_process, start_region
from tests.cluster import eventually

FIELDS = {
    "ts",
    "request_id",
    "client",
    "method",
    "target",
    "status",
    "region",
    "attempts",
    "duration_ms",
}


def _config(region: Region, access_log: object) -> dict[str, Any]:
    return {
        "strategy": "round_robin",
        "health_check": {"path": "/health", "interval": "200ms", "timeout": "150ms"},
        "regions": [region.config()],
        "access_log": access_log,
    }


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_bytes()
    assert not text or text.endswith(b"\n"), "a line was cut"
    return [orjson.loads(line) for line in text.splitlines()]


async def _get(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> None:
    async with session.get(url, **kwargs) as resp:
        assert resp.status == 200
        await resp.read()


async def test_file_gets_the_same_json_fields_within_the_flush_interval(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    region = await start_region(aiohttp_server)
    log_file = tmp_path / "access.log"
    config = _config(region, {"path": str(log_file)})
    async with router_process(tmp_path, config) as router, aiohttp.ClientSession() as session:
        await _get(session, f"{router.proxy}/a?x=1", headers={"X-Request-ID": 'q"t\\é'})
        await _get(session, f"{router.proxy}/b")

        async def two_lines() -> bool:
            return len(_lines(log_file)) == 2

        # No size trigger for two short lines: the timer writes them (about 1 s).
        await eventually(two_lines, 5.0, "two access log lines in the file")
        first, second = _lines(log_file)
        assert set(first) == FIELDS and set(second) == FIELDS
        assert first["target"] == "/a?x=1" and first["method"] == "GET"
        assert first["request_id"] == 'q"t\\Ã©'  # header bytes read as latin-1, as before
        assert first["status"] == 200 and first["region"] == "r1" and first["attempts"] == 1
        assert first["client"] == "127.0.0.1" and 0 <= first["duration_ms"] < 5000
        assert isinstance(first["ts"], float)
        assert second["target"] == "/b" and second["request_id"] != first["request_id"]
    assert '"target"' not in router.log()  # the file, not stdout


async def test_failed_request_logs_router_error_field(tmp_path: Path) -> None:
    (closed,) = free_ports(1)  # nothing listens there: every attempt is refused
    log_file = tmp_path / "access.log"
    config = {
        "strategy": "round_robin",
        "regions": [{"id": "gone", "endpoint": f"http://127.0.0.1:{closed}"}],
        "access_log": {"path": str(log_file)},
    }
    async with router_process(tmp_path, config) as router, aiohttp.ClientSession() as session:
        async with session.get(f"{router.proxy}/x") as resp:
            status = resp.status
        assert status >= 500
        router.process.send_signal(signal.SIGTERM)  # the rest is written at exit
        assert await router.wait_exit(10) == 0, router.log()
    (line,) = _lines(log_file)
    assert line["status"] == status and line["router_error"] and line["region"] in ("gone", None)
    assert set(line) - FIELDS == {"router_error"}


async def _reopen_after_rename(aiohttp_server: AiohttpServer, tmp_path: Path, workers: int) -> None:
    region = await start_region(aiohttp_server)
    log_file = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    config = _config(region, {"path": str(log_file)})
    async with (
        router_process(tmp_path, config, workers=workers) as router,
        aiohttp.ClientSession() as session,
    ):
        for i in range(6):  # new connections: with workers, both get some
            await _get(session, f"{router.proxy}/before/{i}", headers={"Connection": "close"})

        async def six_before() -> bool:
            return len(_lines(log_file)) == 6

        await eventually(six_before, 5.0, "six lines before the rotation")
        log_file.rename(rotated)  # what logrotate does, then it sends SIGUSR1
        router.process.send_signal(signal.SIGUSR1)

        async def reopened() -> bool:
            await _get(session, f"{router.proxy}/after", headers={"Connection": "close"})
            return log_file.exists() and any(
                line["target"] == "/after" for line in _lines(log_file)
            )

        await eventually(reopened, 10.0, "a new access.log after SIGUSR1", poll_s=0.2)
        # A worker that had not yet handled its SIGUSR1 may have put an /after line in the
        # old file; from now on every worker writes to the new one. New connections each
        # round, so with workers every worker serves some of them.
        rounds = iter(range(100))

        async def all_late_lines_in_new_file() -> bool:
            r = next(rounds)
            targets = {f"/late/{r}/{i}" for i in range(10)}
            for target in targets:
                await _get(session, f"{router.proxy}{target}", headers={"Connection": "close"})

            async def written() -> bool:
                seen = {line["target"] for line in _lines(log_file) + _lines(rotated)}
                return targets <= seen

            await eventually(written, 5.0, f"round {r} written", poll_s=0.1)
            return all(t in {line["target"] for line in _lines(log_file)} for t in targets)

        await eventually(all_late_lines_in_new_file, 15.0, "late lines only in the new file")
        router.process.send_signal(signal.SIGTERM)
        assert await router.wait_exit(10) == 0, router.log()
    old = [line["target"] for line in _lines(rotated)]
    new = [line["target"] for line in _lines(log_file)]
    assert sorted(t for t in old if t.startswith("/before/")) == [f"/before/{i}" for i in range(6)]
    assert all(t.startswith(("/before/", "/after")) for t in old)
    assert new and all(t.startswith(("/after", "/late/")) for t in new)


async def test_sigusr1_reopens_the_file_after_logrotate_renamed_it(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    await _reopen_after_rename(aiohttp_server, tmp_path, workers=0)


async def test_workers_share_the_file_and_reopen_on_sigusr1(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    await _reopen_after_rename(aiohttp_server, tmp_path, workers=2)


async def test_blocked_sink_drops_counted_lines_and_never_stalls_requests(
    aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    region = await start_region(aiohttp_server)
    fifo = tmp_path / "access.fifo"
    os.mkfifo(fifo)
    # A reader that never reads: the router's writes fill the pipe (64 KiB), then block.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        config = _config(region, {"path": str(fifo)})
        async with (
            router_process(tmp_path, config) as router,
            aiohttp.ClientSession() as session,
        ):
            long_path = "/" + "p" * 2000  # ~2.2 KB lines: 1 MiB of queue in ~500 requests
            for _ in range(900):
                async with session.get(f"{router.proxy}{long_path}") as resp:
                    assert resp.status == 200
                    await resp.read()

            async def dropped() -> float:
                async with session.get(f"{router.admin}/metrics") as resp:
                    text = await resp.text()
                match = re.search(r"^router_access_log_dropped_total (\S+)$", text, re.M)
                assert match is not None, text
                return float(match[1])

            async def some_dropped() -> bool:
                return await dropped() > 0

            await eventually(some_dropped, 5.0, "dropped lines counted")
            # The loop is not stalled behind the blocked writer: requests still answer.
            async with session.get(f"{router.proxy}/still") as resp:
                assert resp.status == 200
            count = await dropped()
            router.process.send_signal(signal.SIGTERM)
            assert await router.wait_exit(15) == 0, router.log()
        written = b""
        while chunk := os.read(reader, 1 << 16):
            written += chunk
    finally:
        os.close(reader)
    # The process exited while its writer was blocked mid-write: only the last line is cut.
    complete = written[: written.rfind(b"\n") + 1]
    lines = [orjson.loads(line) for line in complete.splitlines()]
    assert lines and all(line["target"] == long_path for line in lines)
    assert count > 0 and len(lines) + count <= 901  # none both written and counted


async def test_unwritable_log_file_is_a_start_up_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "access.log"
    config = {
        "regions": [{"id": "r1", "endpoint": "http://127.0.0.1:9"}],
        "access_log": {"path": str(missing)},
    }
    async with router_process(tmp_path, config, ready=False) as router:
        assert await router.wait_exit(30) == 2, router.log()
    assert str(missing) in router.log()
