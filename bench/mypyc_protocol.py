"""What reaching an object through an abstraction costs in mypyc-compiled code.

Compiles a tiny module into a temp dir with mypyc and times, interleaved, the same loops
over one object typed four ways: its concrete class, a native base class it extends, a
``mypy_extensions.trait`` it implements, and a ``typing.Protocol`` it matches. Two loops
each: attribute access (3 reads and a write) and a method call (the method does the same):

    python bench/mypyc_protocol.py

Why it matters: the hot path is compiled (setup.py), and the proxy package's layers
(docs/architecture.md) let a lower module call up only through a type it defines itself.
A base class keeps mypyc's native struct reads and vtable calls; a Protocol does not.
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

from mypy_extensions import trait


class Base:
    def __init__(self) -> None:
        self.inflight = 0
        self.limit = 10

    def bump(self) -> int:
        raise NotImplementedError


@trait
class Trait:
    inflight: int
    limit: int

    def bump(self) -> int:
        raise NotImplementedError


class CoreLike(Protocol):
    inflight: int
    limit: int

    def bump(self) -> int: ...


class Core(Base, Trait):
    def bump(self) -> int:
        self.inflight += 1
        return self.limit + self.inflight


def attr_concrete(core: Core, n: int) -> int:
    total = 0
    for _ in range(n):
        core.inflight += 1
        total += core.limit + core.inflight
    return total


def attr_base(core: Base, n: int) -> int:
    total = 0
    for _ in range(n):
        core.inflight += 1
        total += core.limit + core.inflight
    return total


def attr_trait(core: Trait, n: int) -> int:
    total = 0
    for _ in range(n):
        core.inflight += 1
        total += core.limit + core.inflight
    return total


def attr_protocol(core: CoreLike, n: int) -> int:
    total = 0
    for _ in range(n):
        core.inflight += 1
        total += core.limit + core.inflight
    return total


def call_concrete(core: Core, n: int) -> int:
    total = 0
    for _ in range(n):
        total += core.bump()
    return total


def call_base(core: Base, n: int) -> int:
    total = 0
    for _ in range(n):
        total += core.bump()
    return total


def call_trait(core: Trait, n: int) -> int:
    total = 0
    for _ in range(n):
        total += core.bump()
    return total


def call_protocol(core: CoreLike, n: int) -> int:
    total = 0
    for _ in range(n):
        total += core.bump()
    return total
"""
N = 2_000_000
KINDS = ("concrete", "base", "trait", "protocol")


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
        for r in range(7):
            kinds = KINDS[r % 4 :] + KINDS[: r % 4]  # rotated: no kind always runs first
            for loop in ("attr", "call"):
                for kind in kinds:
                    name = f"{loop}_{kind}"
                    started = time.perf_counter()
                    getattr(mod, name)(core, N)
                    ns = (time.perf_counter() - started) / N * 1e9
                    best[name] = min(best.get(name, ns), ns)
    print("ns/iteration, best of 7 rotated rounds (attr: 3 reads + 1 write; call: one method")
    print("call doing the same):")
    print(f"  {'typed as':10} {'attr':>7} {'call':>7}")
    for kind in KINDS:
        print(f"  {kind:10} {best[f'attr_{kind}']:7.1f} {best[f'call_{kind}']:7.1f}")
    for kind in KINDS[1:]:
        attr = best[f"attr_{kind}"] / best["attr_concrete"]
        call = best[f"call_{kind}"] / best["call_concrete"]
        print(f"  {kind} / concrete: attr {attr:.1f}x, call {call:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
