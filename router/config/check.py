"""``region-router check``: validate a config file and print the verdict."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TextIO

from router.config.loader import ConfigError, config_notes, load_config, resolve_config_path


def check_command(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print ``OK: ...`` (stdout) or every error with its path (stderr); return the exit code.

    ``path`` None resolves like ``run``: ``$ROUTER_CONFIG``, else ``./config.yaml``.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    resolved = os.fspath(path) if path is not None else resolve_config_path(None, env)
    try:
        config = load_config(resolved, env)
    except ConfigError as exc:
        for error in exc.errors:
            print(error, file=err)
        return 1
    for note in config_notes(config):
        print(f"note: {note}", file=err)
    count = len(config.regions)
    print(
        f"OK: {count} region{'' if count == 1 else 's'}, strategy {config.strategy}, "
        f"hash {config.config_hash[:12]}",
        file=out,
    )
    return 0
