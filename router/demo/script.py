"""The demo's script: the config it runs (the user's, else the packaged one, pointed at the
simulated regions) and when which region goes down and comes back."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from importlib import resources

from router.config.loader import (
    Config,
    HostPort,
    config_hash,
    load_config,
    parse_config,
    parse_endpoint,
)

DOWN_AT, UP_AT = 0.3, 0.6  # with --duration: fractions of the run
CYCLE_S, CYCLE_DOWN_S, CYCLE_UP_S = 60.0, 20.0, 40.0  # until Ctrl-C: every minute


def load_demo_config(config_path: str | None) -> tuple[Config, str]:
    """``-c FILE``, else ./config.yaml, else the copy packaged with region-router."""
    path = config_path or ("config.yaml" if os.path.exists("config.yaml") else None)
    if path is not None:
        return load_config(path), path
    text = resources.files("router.demo").joinpath("demo_config.yaml").read_text(encoding="utf-8")
    return parse_config(text), "the packaged demo config"


@dataclass(frozen=True, slots=True)
class Step:
    at_s: float  # seconds since the traffic started
    action: str  # "down" | "up"
    region: str

    def describe(self) -> str:
        what = "take {} down" if self.action == "down" else "bring {} back"
        return f"t={seconds(self.at_s)}s " + what.format(self.region)


def seconds(value: float) -> str:
    """``2.4`` or ``20``: a time on the demo's clock, as short as it can be."""
    return f"{value:.1f}".removesuffix(".0")


def scenario(region_ids: Sequence[str], duration_s: float) -> Iterator[Step]:
    """When to take which region down and bring it back.

    With a duration: the first region (the fastest, so the one with most traffic) goes down
    at 30% of the run and comes back at 60%. Until Ctrl-C: every minute the next region in
    turn goes down at :20 and comes back at :40.
    """
    if duration_s > 0:
        yield Step(duration_s * DOWN_AT, "down", region_ids[0])
        yield Step(duration_s * UP_AT, "up", region_ids[0])
        return
    for k in itertools.count():
        victim = region_ids[k % len(region_ids)]
        yield Step(k * CYCLE_S + CYCLE_DOWN_S, "down", victim)
        yield Step(k * CYCLE_S + CYCLE_UP_S, "up", victim)


def demo_config(
    config: Config, endpoints: dict[str, str], state_dir: str, proxy: HostPort, admin: HostPort
) -> Config:
    """The config as the demo runs it: regions at the demo servers, state in a temp dir, no
    file watching (the file's endpoints are not the demo's), no access log on the screen."""
    regions = tuple(replace(rc, endpoint=parse_endpoint(endpoints[rc.id])) for rc in config.regions)
    new = replace(
        config,
        listen=replace(config.listen, proxy=proxy, admin=admin),
        state_dir=state_dir,
        state=replace(config.state, backend="file"),
        reload=replace(config.reload, watch=False),
        access_log=False,
        regions=regions,
    )
    return replace(new, config_hash=config_hash(new))
