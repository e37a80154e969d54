"""What a typing.Protocol costs in mypyc-compiled code, against the concrete class.

Compiles a tiny module twice-typed (the same loop over a concrete class and over a Protocol
with the same attributes) into a temp dir with mypyc and times both, interleaved:

    python bench/mypyc_protocol.py

Why it matters: the hot path is compiled (setup.py), and breaking the proxy path's
TYPE_CHECKING import cycle with Protocols would turn its native attribute accesses into
generic ones (docs/architecture.md).
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE = """
from typing import Protocol


class Core:
    def __init__(self) -> None:
        self.inflight = 0
        self.limit = 10


class CoreLike(Protocol):
    inflight: int
    limit: int


def concrete(core: Core, n: int) -> int:
    total = 0
    for _ in range(n):
        core.inflight += 1
        total += core.limit + core.inflight
    return total


def protocol(core: CoreLike, n: int) -> int:
    total = 0
    for _ in range(n):
        core.inflight += 1
        total += core.limit + core.inflight
    return total
"""
N = 2_000_000


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "protobench.py").write_text(SOURCE)
        subprocess.run(
            [sys.executable, "-m", "mypyc", "protobench.py"],
            cwd=tmp,
            check=True,
            capture_output=True,
        )
        sys.path.insert(0, tmp)
        mod = importlib.import_module("protobench")
        if not str(mod.__file__).endswith(".so"):
            print("mypyc did not compile the module", file=sys.stderr)
            return 1
        core = mod.Core()
        best: dict[str, float] = {}
        for _ in range(5):
            for name in ("concrete", "protocol"):
                started = time.perf_counter()
                getattr(mod, name)(core, N)
                ns = (time.perf_counter() - started) / N * 1e9
                best[name] = min(best.get(name, ns), ns)
    print("3 attribute reads and 1 write per iteration, best of 5 interleaved rounds:")
    for name, ns in best.items():
        print(f"  {name:9} {ns:6.1f} ns/iteration")
    print(f"  protocol / concrete: {best['protocol'] / best['concrete']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
