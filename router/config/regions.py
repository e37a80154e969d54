"""Region entries: the config's ``regions`` list and the admin API's region bodies.

``parse_region`` checks a registration body with the same rules as the file, and
``parse_region_patch`` the fields a PATCH may change.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from types import MappingProxyType

from router.config.model import Endpoint, RegionConfig
from router.config.units import show
from router.config.validate import FieldError, Fields, Parser, as_int, as_str, join
from router.config.values import REGION_ID, parse_endpoint, parse_path, parse_region_id

_REGION = RegionConfig(
    id="x", name="x", endpoint=Endpoint(url="", scheme="http", host="x", port=80, base_path="")
)


def parse_labels(f: Fields, key: str = "labels") -> Mapping[str, str]:
    labels: dict[str, str] = {}
    for name, path, value in f.entries(key):
        if isinstance(value, str):
            labels[name] = str(value)
        else:
            f.errors.append(FieldError(path, f"expected a string (quote it), got {show(value)}"))
    return MappingProxyType(labels)


def region_ref(ids: Collection[str]) -> Parser[str]:
    """A region id that the config defines."""

    def parse(value: object) -> str:
        text = as_str(nonempty=True)(value)
        if text not in ids:
            close = difflib.get_close_matches(text, sorted(ids), n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown region {text!r}{hint}")
        return text

    return parse


# -- regions (shared with the admin API) ----------------------------------------------------


def parse_region(data: object, path: str, errors: list[FieldError]) -> RegionConfig | None:
    """One region, from the config file or an admin registration body; None after errors."""
    before = len(errors)
    with Fields(data, path, errors) as f:
        region_id = f.required("id", parse_region_id)
        name = f.optional("name", as_str(nonempty=True))
        endpoint = f.required("endpoint", parse_endpoint)
        weight = f.integer("weight", _REGION.weight, lo=0, hi=10_000)
        priority = f.integer("priority", _REGION.priority, lo=0)
        labels = parse_labels(f)
        metrics_path = f.optional("metrics_path", parse_path)
        max_inflight = f.integer("max_inflight", _REGION.max_inflight, lo=0)
        ca_file = f.optional("ca_file", as_str(nonempty=True))
        protocol = f.choice("protocol", _REGION.protocol, ("http1", "h2"))
    if len(errors) > before or region_id is None or endpoint is None:
        return None
    return RegionConfig(
        id=region_id,
        name=region_id if name is None else name,
        endpoint=endpoint,
        weight=weight,
        priority=priority,
        labels=labels,
        metrics_path=metrics_path,
        max_inflight=max_inflight,
        ca_file=ca_file,
        protocol=protocol,
    )


def parse_region_patch(data: object, path: str, errors: list[FieldError]) -> dict[str, object]:
    """The changeable fields of a region (PATCH body): only the keys present, validated."""
    changes: dict[str, object] = {}
    with Fields(data, path, errors) as f:
        if f.has("name"):
            changes["name"] = f.required("name", as_str(nonempty=True))
        if f.has("weight"):
            changes["weight"] = f.required("weight", as_int(lo=0, hi=10_000))
        if f.has("priority"):
            changes["priority"] = f.required("priority", as_int(lo=0))
        if f.has("labels"):
            changes["labels"] = parse_labels(f)
    return changes


def regions_section(f: Fields) -> tuple[tuple[RegionConfig, ...], set[str]]:
    """The valid regions, and every well-formed id declared (so one bad field in a region
    does not turn each route naming it into a second error)."""
    regions: list[RegionConfig] = []
    first_at: dict[str, str] = {}
    for path, item in f.items("regions"):
        region = parse_region(item, path, f.errors)
        declared = item.get("id") if isinstance(item, Mapping) else None
        if not isinstance(declared, str) or not REGION_ID.fullmatch(declared):
            continue
        if declared in first_at:
            message = f"duplicate region id {declared!r} (first at {first_at[declared]})"
            f.errors.append(FieldError(join(path, "id"), message))
            continue
        first_at[declared] = path
        if region is not None:
            regions.append(region)
    return tuple(regions), set(first_at)
