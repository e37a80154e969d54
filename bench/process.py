"""Child processes the benchmark starts: CPU pinning, readiness, CPU accounting, stop by PID."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import deque
from contextlib import suppress
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.05
HAVE_TASKSET = shutil.which("taskset") is not None
KTHREADD_PID = 2  # parent of every kernel thread


class TargetError(Exception):
    """A process did not start, did not become ready, died, or answered wrongly.

    Carries the tail of the process's own log, so a report can show why.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    """`argv` run under `taskset -c cpu` (taskset execs it, so the PID is the program's own)."""
    if cpu is None or not HAVE_TASKSET:
        return argv
    return ["taskset", "-c", str(cpu), *argv]


def free_ports(count: int) -> list[int]:
    """Distinct ports the kernel reports free on 127.0.0.1 (all held open until all are picked)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def http_get(port: int, path: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """One GET to 127.0.0.1:port; returns (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Child:
    """One process this benchmark started, in its own session, logging to one file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = log_path.open("wb")
        try:
            # A new session keeps the terminal's Ctrl-C away from it (we stop it ourselves, in
            # order) and makes its PID its process-group id, so its own children are findable.
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except OSError:
            self._log.close()
            raise

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited({self._proc.returncode})"
        return f"<Child {self.name} pid={self.pid} {state}>"

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def returncode(self) -> int | None:
        return self._proc.poll()

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of its combined stdout and stderr."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def exit_text(self) -> str:
        code = self.returncode()
        if code is None:
            return "is still running"
        if code < 0:
            return f"was killed by signal {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def ensure_alive(self) -> None:
        if not self.alive():
            raise TargetError(f"{self.name} {self.exit_text()} during the run", self.log_tail())

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL what is left of its process group. Idempotent."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        # Its own children (e.g. router workers) are in the group whose id is its PID.
        for pid in _group_members(self.pid):
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._log.close()


def wait_ready(child: Child, port: int, path: str, timeout_s: float) -> None:
    """Poll GET 127.0.0.1:port/path until it answers 200; fail fast if the child exits."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not child.alive():
            raise TargetError(
                f"{child.name} {child.exit_text()} before it was ready", child.log_tail()
            )
        try:
            status, _ = http_get(port, path, timeout_s=1.0)
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                return
            last = f"HTTP {status}"
        time.sleep(POLL_INTERVAL_S)
    raise TargetError(
        f"{child.name} not ready: GET 127.0.0.1:{port}{path} gave no 200 within "
        f"{timeout_s:g}s (last: {last})",
        child.log_tail(),
    )


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the `(comm)` field: [state, ppid, pgrp, ...]."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit()]


def _group_members(pgid: int) -> list[int]:
    members = []
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is not None and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(pid)
    return members


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(pid)
    tree, queue = [], deque([root])
    while queue:
        pid = queue.popleft()
        tree.append(pid)
        queue.extend(children.get(pid, ()))
    return tree


def cpu_seconds(root: int) -> float:
    """CPU time (user+system) of `root` and every live descendant, plus their reaped children.

    Counting cutime/cstime too keeps the sum continuous when a worker exits and is reaped
    between two readings.
    """
    ticks = 0
    for pid in _process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # utime, stime, cutime, cstime are stat fields 14-17, i.e. 11-14 after `(comm)`.
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS_PER_S


def foreign_cpu_seconds() -> float:
    """CPU time of every user-space process outside this benchmark's own process tree.

    The delta across a run is interference from other work on the machine. Kernel threads
    are left out: ksoftirqd time is mostly our own loopback traffic.
    """
    ours = set(_process_tree(os.getpid()))
    ticks = 0
    for pid in _all_pids():
        if pid in ours:
            continue
        fields = _stat_fields(pid)
        if fields is None or pid == KTHREADD_PID or int(fields[1]) == KTHREADD_PID:
            continue
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS_PER_S


def steal_seconds(cpus: tuple[int, ...]) -> dict[int, float]:
    """Each CPU's ``steal`` time so far: the hypervisor ran another guest while this one
    had work. A VM stalled as a whole (every target at half speed, nginx included) shows
    here and nowhere else; the per-process CPU times cannot see it.
    """
    wanted = {f"cpu{cpu}": cpu for cpu in cpus}
    out: dict[int, float] = {}
    with open("/proc/stat") as stat:
        for line in stat:
            fields = line.split()
            cpu = wanted.get(fields[0]) if fields else None
            # cpuN user nice system idle iowait irq softirq steal ...
            if cpu is not None and len(fields) > 8:
                out[cpu] = int(fields[8]) / CLOCK_TICKS_PER_S
    return out


def steal_since(before: dict[int, float]) -> float:
    """The most steal time any CPU of ``before`` (a ``steal_seconds`` reading) had since."""
    after = steal_seconds(tuple(before))
    return max((after[cpu] - seconds for cpu, seconds in before.items()), default=0.0)
