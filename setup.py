"""Optional compiled build of the proxy's hot path with mypyc (issue 12, docs/performance.md).

The hot path (router/proxy, router/routing) is plain, fully typed Python; mypyc turns those
modules into C extensions, which run the same code several times faster. Everything else
stays interpreted. The build is optional, so ``pip install .`` works everywhere:

- compiled when mypy's mypyc, a C compiler and the Python headers are all present;
- pure Python otherwise (with a line saying why), or when ``REGION_ROUTER_PURE=1``;
- pure Python for editable installs (``pip install -e .``): a compiled module next to its
  source would shadow every later edit of that source. ``REGION_ROUTER_COMPILE=1`` forces a
  compiled build (and fails loudly instead of falling back), as CI does to test both.

All metadata is in pyproject.toml; this file only adds the extension modules.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# The per-request path: what bench/hotpath.py exercises, plus the modules it calls into.
# accesslog.py (the per-request record) and dns.py (the pool's address pick per request)
# are in it since their interpreted calls showed up in perf's per-request profile: with
# them, bench/hotpath.py --shape defaults went from 23.2 to 21.9 us/request (docs/performance.md).
COMPILED = [
    "router/proxy/accesslog.py",
    "router/proxy/batching.py",
    "router/proxy/busypoll.py",
    "router/proxy/client.py",
    "router/proxy/core.py",
    "router/proxy/dns.py",
    "router/proxy/exchange.py",
    # h2front/h2stream/h2upstream/h2region_stream: H2Exchange and H2RegionStream subclass
    # compiled classes (an interpreted class cannot), and the HTTP/2 path is per-request
    # code too; h2frames, h2wire and h2hpack are the client side's framing and response
    # HPACK, written for mypyc.
    "router/proxy/h2front.py",
    "router/proxy/h2stream.py",
    "router/proxy/h2region_stream.py",
    "router/proxy/h2upstream.py",
    "router/proxy/h2frames.py",
    "router/proxy/h2hpack.py",
    "router/proxy/h2replies.py",
    "router/proxy/h2request.py",
    "router/proxy/h2wire.py",
    "router/proxy/headers.py",
    "router/proxy/hedging.py",
    "router/proxy/interfaces.py",
    "router/proxy/paths.py",
    "router/proxy/pool.py",
    "router/proxy/request_head.py",
    "router/proxy/response.py",
    "router/proxy/retries.py",
    "router/proxy/services.py",
    # the https connection's transport: every TLS read and write goes through it
    "router/proxy/tlsio.py",
    # the https accept loop: runs once per new TLS connection
    "router/proxy/tlslisten.py",
    "router/proxy/upstream.py",
    # the outlier observer: OutlierDetector.record runs on every upstream attempt's outcome
    "router/health/outlier.py",
    "router/routing/load.py",
    "router/routing/routes.py",
    "router/routing/strategies.py",
    # the routing state the selector and the exchange read per request (native: struct reads)
    "router/state/snapshot.py",
    "router/traffic.py",
]


def note(message: str) -> None:
    print(f"region-router build: {message}", file=sys.stderr)


def forced() -> bool:
    return os.environ.get("REGION_ROUTER_COMPILE") == "1"


def why_not_compiled() -> str | None:
    if os.environ.get("REGION_ROUTER_PURE") == "1":
        return "REGION_ROUTER_PURE=1"
    if not forced() and any("editable" in arg for arg in sys.argv):
        return "editable install (a compiled module would shadow edits of its source)"
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler} not found)"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return "no Python headers (Python.h)"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc (part of mypy) is not installed"
    return None


class OptionalBuildExt(build_ext):
    """Compile when possible. The compiled modules share one runtime library, so it is all
    or nothing: an unforced failure removes every built module and installs pure Python."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            if forced():
                raise
            for built in self.get_outputs():
                Path(built).unlink(missing_ok=True)
            note(f"compiling failed ({exc}); installing pure Python")


# setup.py also runs for metadata only (egg_info, dist_info): no need to compile then.
BUILD_COMMANDS = {"build", "build_ext", "bdist_wheel", "install", "develop", "editable_wheel"}


def extensions() -> list[Any]:
    if not BUILD_COMMANDS.intersection(sys.argv[1:]):
        return []
    reason = why_not_compiled()
    if reason is not None:
        if forced():
            sys.exit(f"region-router build: REGION_ROUTER_COMPILE=1 but cannot compile: {reason}")
        note(f"pure Python: {reason}")
        return []
    from mypyc.build import mypycify

    note(f"compiling {len(COMPILED)} hot-path modules with mypyc")
    # The build environment has none of the runtime dependencies installed, so imports of
    # them are Any here; the project's strict mypy run (CI) checks them with the real types.
    options = ["--config-file", str(ROOT / "setup-mypyc.ini")]
    try:
        return list(
            mypycify(
                [*options, *COMPILED], opt_level="3", debug_level="0", group_name="region_router"
            )
        )
    except (Exception, SystemExit) as exc:
        if forced():
            raise
        note(f"mypyc could not compile ({exc}); installing pure Python")
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
