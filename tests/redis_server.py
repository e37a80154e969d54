"""A throwaway ``redis-server`` on a free loopback port, for the shared-state tests.

``redis_binary()`` is None where the Debian package is missing (tests skip, saying so).
``RedisServer.start()`` runs it with no persistence in its own directory; ``stop()`` kills it
(its data is gone, as after a crash of a Redis without persistence); ``start()`` again
brings back an empty server on the same port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.backends import free_port


def redis_binary() -> str | None:
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.path.exists(p)),
        None,
    )


def require_redis() -> str:
    binary = redis_binary()
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; .ci/run has it)")
    return binary


class RedisServer:
    def __init__(self, binary: str, directory: Path, extra_args: tuple[str, ...] = ()) -> None:
        """``extra_args``: e.g. ``("--replicaof", "127.0.0.1", "6379")`` for a replica."""
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING within 10s")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill it (no save): the data is gone."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
