"""Config reload for ``Control``: read and validate the file, swap it in, watch it for changes.

A reload reads the file, validates it fully (an invalid one changes nothing and is
reported), then swaps it in atomically: regions with an unchanged id and endpoint keep their
health, latency and failover state; the diff says what changed. Operations on regions that
left the file (or changed endpoint) end, and the stored state follows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from router.config.diff import ReloadResult, diff_configs, file_digest, read_config_text
from router.config.loader import Config, ConfigError, FieldError, parse_config
from router.store.files import StoreWriteError

if TYPE_CHECKING:
    from router.control.core import Control

log = logging.getLogger("router.control.core")


async def reload_from_file(control: Control, source: str) -> ReloadResult:
    """Read, validate and apply the config file; an invalid one changes nothing."""
    old = control.registry.config
    if not control.config_path:
        result = ReloadResult(
            ok=False,
            source=source,
            at=control.wall(),
            errors=[FieldError("config", "this router was started without a config file")],
            config_hash=old.config_hash,
        )
    else:
        try:
            text, digest = read_config_text(control.config_path)
            control.watch_digest = digest  # this content has been seen, good or bad
            new = parse_config(text)
        except ConfigError as exc:
            result = ReloadResult(
                ok=False,
                source=source,
                at=control.wall(),
                errors=list(exc.errors),
                config_hash=old.config_hash,
            )
        else:
            result = await control.apply_config(new, source)
    control.last_reload = result
    control.runtime.config_reloads.labels("success" if result.ok else "error").inc()
    if result.ok:
        log.info("config reloaded (%s): %s", source, result.diff.to_json() if result.diff else {})
    else:
        log.error(
            "config reload (%s) rejected; the old config keeps serving: %s",
            source,
            "; ".join(str(e) for e in result.errors),
        )
    return result


async def apply_config(control: Control, new: Config, source: str) -> ReloadResult:
    """Swap in a validated config (``control.lock`` held); unchanged regions keep state."""
    old = control.registry.config
    diff = diff_configs(old, new)
    wall, now = control.wall(), time.monotonic()
    before = {
        rec.config.id: (rec.config.endpoint, set(rec.overrides))
        for rec in control.registry.records()
    }
    control.registry.apply_config(new, now)
    by_id = control.registry.snapshot().by_id
    ops_changed = False
    for region_id in list(control.ops.active):
        view = by_id.get(region_id)
        if view is None:
            why = "region removed from the config file"
        elif view.endpoint != before[region_id][0]:
            why = "region endpoint changed in the config file"
        else:
            continue
        control.ops.end(region_id, wall, why)
        ops_changed = True
        diff.notes.append(f"{region_id}: failover operation ended ({why})")
    for rec in control.registry.records():
        prev = before.get(rec.config.id)
        if prev is not None and rec.config.endpoint == prev[0]:
            for name in sorted(prev[1] - set(rec.overrides)):
                diff.notes.append(
                    f"{rec.config.id}: runtime override of {name} dropped "
                    "(the config file changed it)"
                )
    control.runtime.health.sync()
    try:
        if ops_changed:
            await control.state.save_ops()
        await control.state.save_regions()
    except StoreWriteError as exc:
        log.error("config applied, but the state files were not updated: %s", exc)
        diff.notes.append(f"state not saved: {exc}")
    return ReloadResult(ok=True, source=source, at=wall, diff=diff, config_hash=new.config_hash)


async def watch_config(control: Control) -> None:
    """Reload when the file's content changes and then stays put for ``debounce``."""
    assert control.config_path is not None
    path = control.config_path
    while True:
        settings = control.registry.config.reload
        await asyncio.sleep(max(0.05, min(settings.debounce_s, 1.0)))
        if not settings.watch:
            continue
        digest = file_digest(path)
        if digest is None or digest == control.watch_digest:
            continue
        while True:  # debounce: editors write files in several steps
            await asyncio.sleep(settings.debounce_s)
            again = file_digest(path)
            if again == digest:
                break
            digest = again
        if digest is None or digest == control.watch_digest:
            continue
        await control.reload("watch")
