"""``region-router demo`` as a user runs it: a real subprocess, failover and recovery visible.

The demo runs from an empty directory. The failover run uses the repo's config.yaml moved
to free ports, so it cannot collide with another demo on this machine; the Ctrl-C run uses
the config packaged with region-router (the same file), as after ``pip install .``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
T = r"^t=[\d.]+s: "  # an event line


def demo_process(cwd: Path, *args: str) -> subprocess.Popen[str]:
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath, "NO_COLOR": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "router", "demo", "--non-interactive", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def first_line(pattern: str, lines: list[str], start: int = 0) -> int:
    """Index of the first line at or after ``start`` matching ``pattern``."""
    for i in range(start, len(lines)):
        if re.search(pattern, lines[i]):
            return i
    raise AssertionError(f"no line matches {pattern!r} after line {start}:\n" + "\n".join(lines))


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def repo_config_on_free_ports(tmp_path: Path) -> Path:
    text = (REPO / "config.yaml").read_text(encoding="utf-8")
    addresses = sorted(set(re.findall(r"127\.0\.0\.1:\d+", text)))
    assert len(addresses) == 5, addresses  # proxy, admin, three regions
    for address, port in zip(addresses, free_ports(len(addresses)), strict=True):
        text = text.replace(address, f"127.0.0.1:{port}")
    path = tmp_path / "demo.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_demo_shows_failover_and_recovery(tmp_path: Path) -> None:
    config = repo_config_on_free_ports(tmp_path)
    proc = demo_process(tmp_path, "--duration", "8", "-c", str(config))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    lines = out.splitlines()
    assert f"(config: {config})" in lines[0]
    assert "busy" not in out, out
    first_line(r"^proxy: +http://127\.0\.0\.1:\d+$", lines)
    first_line(r"^admin: +http://127\.0\.0\.1:\d+ ", lines)
    first_line(r"^dashboard: +http://127\.0\.0\.1:\d+/admin/dashboard$", lines)

    down = first_line(T + r"taking \S+ down", lines)
    victim = re.findall(r"taking (\S+) down", lines[down])[0]
    out_of_rotation = first_line(T + rf"{victim}: \w+ -> (unhealthy|ejected)", lines, down)
    back = first_line(T + rf"bringing {victim} back", lines, out_of_rotation)
    first_line(T + rf"{victim}: \w+ -> (recovering|healthy)", lines, back)
    # while it was out, the status lines show it out and the others serving
    outage_status = [
        line
        for line in lines[out_of_rotation:back]
        if re.match(rf"t=\d+s .* {victim} (unhealthy|ejected) ", line)
    ]
    assert outage_status, out
    assert all(re.search(r"\| \S+ healthy [1-9]\d*%", line) for line in outage_status), out

    summary = re.search(r"^summary: (\d+) requests in [\d.]+s, (\d+) ok", out, re.M)
    assert summary is not None, out
    total, ok = int(summary[1]), int(summary[2])
    assert total >= 150, out  # about 75 req/s for 8 s
    assert ok >= 0.95 * total, out
    assert re.search(rf"^summary: {victim} went down .* in rotation again", out, re.M), out


@contextlib.contextmanager
def occupied(port: int) -> Iterator[None]:
    """Hold 127.0.0.1:port with a listening socket (if something else holds it, fine too)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAITs of earlier runs
    try:
        with contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            sock.listen()
        yield
    finally:
        sock.close()


def test_demo_takes_free_ports_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    with occupied(8080), occupied(9102):
        proc = demo_process(tmp_path)  # no --duration: runs until Ctrl-C
        assert proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line.rstrip("\n"))
            if line.startswith("t=2s "):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    lines = seen + out.splitlines()
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    first_line(r"^region-router demo: .*\(config: the packaged demo config\)$", lines)
    first_line(r"note: proxy address 127\.0\.0\.1:8080 is busy", lines)
    first_line(r"note: 127\.0\.0\.1:9102 is busy; eu-west-1 listens on a free port", lines)
    proxy = first_line(r"^proxy: +http://127\.0\.0\.1:\d+$", lines)
    assert not lines[proxy].endswith(":8080")
    status = first_line(r"^t=2s ", lines)
    assert re.search(r"ok 100\.0%", lines[status]), lines[status]
    assert re.search(r"eu-west-1 healthy", lines[status]), lines[status]
    first_line(r"^summary: \d+ requests in", lines, status)


def test_packaged_demo_config_is_the_repo_config() -> None:
    """``pip install .`` ships router/demo/demo_config.yaml; it must not drift from config.yaml."""
    packaged = (REPO / "router" / "demo" / "demo_config.yaml").read_text(encoding="utf-8")
    assert packaged == (REPO / "config.yaml").read_text(encoding="utf-8")
