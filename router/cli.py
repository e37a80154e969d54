"""``region-router run | check | demo``: the command line, argparse only.

Each command lives with what it runs: ``run`` in ``router.service`` (the composition root),
``check`` in ``router.config.check``, ``demo`` in ``router.demo.run``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from router import __version__
from router.config.check import check_command
from router.demo.run import demo_command
from router.service import run_command

# The `--help` text (the module docstring above is for readers of the code).
DESCRIPTION = "A multi-region HTTP reverse proxy with health-driven failover."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="region-router", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"region-router {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the proxy and admin listeners")
    run.add_argument("-c", "--config", help="config file (default: $ROUTER_CONFIG, ./config.yaml)")
    run.add_argument(
        "--workers",
        default=None,
        help="serve from N worker processes (N or auto = usable cores) under a supervisor "
        "that owns the control plane; default: one process does everything",
    )
    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("-c", "--config")
    demo = sub.add_parser("demo", help="local demo: three regions, traffic, failover")
    demo.add_argument("-c", "--config", help="config (default: ./config.yaml, else packaged)")
    demo.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until Ctrl-C")
    demo.add_argument(
        "--non-interactive", action="store_true", help="plain log lines instead of a live table"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "check":
        return check_command(args.config)
    if args.command == "demo":
        return int(demo_command(args.config, args.duration, interactive=not args.non_interactive))
    return run_command(args.config, args.workers)
