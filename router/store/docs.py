"""The state documents as entries: how a shared store keeps each kind, one entry per thing.

The file backend writes whole documents (``regions.json`` ...). A store shared by several
hosts keeps each document as a hash of entries instead, so two hosts changing different
things never overwrite each other, and a change travels as the few entries it touched.
``split`` turns a document into entries, ``join`` turns entries back into the same
document (what ``load`` returns, whichever the backend). Entry keys:

- regions: ``runtime:<id>`` (a runtime registration), ``override:<id>`` (overrides of a
  config region with the file's values they were made against)
- operations: ``active:<region>`` (the region's running failover), ``ended:<op id>``
- replications: ``job:<id>``
- artifacts: ``copy:<region>/<name>`` (a verified copy), ``catalog:<name>``

``history`` is a list, not entries: a shared store appends to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

ENTRY_KINDS = ("regions", "operations", "replications", "artifacts")


def encode(value: Any) -> bytes:
    """Canonical JSON (sorted keys): equal values encode to equal bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def region_key(region_id: str) -> str:
    return f"runtime:{region_id}"


def operation_key(region_id: str) -> str:
    return f"active:{region_id}"


def split_key(key: str) -> tuple[str, str]:
    """``("runtime", "us-east-1")`` for ``runtime:us-east-1``."""
    prefix, _, rest = key.partition(":")
    return prefix, rest


def split(kind: str, doc: Any) -> dict[str, Any]:
    """The entries of a document (an empty or malformed document has none)."""
    out: dict[str, Any] = {}
    if not isinstance(doc, dict):
        return out
    if kind == "regions":
        for rc in doc.get("runtime") or []:
            out[region_key(rc["id"])] = rc
        bases = doc.get("override_bases") or {}
        for region_id, overrides in (doc.get("overrides") or {}).items():
            out[f"override:{region_id}"] = {
                "overrides": overrides,
                "base": bases.get(region_id) or {},
            }
    elif kind == "operations":
        for op in doc.get("active") or []:
            out[operation_key(op["region"])] = op
        for op in doc.get("ended") or []:
            out[f"ended:{op['id']}"] = op
    elif kind == "replications":
        for job in doc.get("jobs") or []:
            out[f"job:{job['id']}"] = job
    elif kind == "artifacts":
        for region_id, entry in (doc.get("regions") or {}).items():
            for name, sha256 in (entry.get("artifacts") or {}).items():
                out[f"copy:{region_id}/{name}"] = {
                    "endpoint": entry.get("endpoint"),
                    "sha256": sha256,
                }
        for name, info in (doc.get("catalog") or {}).items():
            out[f"catalog:{name}"] = info
    else:
        raise ValueError(f"{kind} is not kept as entries")
    return out


def join(kind: str, entries: Mapping[str, Any]) -> Any:
    """The document made of ``entries`` (None when there are none: nothing stored)."""
    if not entries:
        return None
    groups: dict[str, list[tuple[str, Any]]] = {}
    for key, value in entries.items():
        prefix, rest = split_key(key)
        groups.setdefault(prefix, []).append((rest, value))
    if kind == "regions":
        overrides = dict(sorted(groups.get("override", [])))
        return {
            "runtime": [v for _, v in sorted(groups.get("runtime", []))],
            "overrides": {k: v.get("overrides") or {} for k, v in overrides.items()},
            "override_bases": {k: v.get("base") or {} for k, v in overrides.items()},
        }
    if kind == "operations":
        active = [v for _, v in groups.get("active", [])]
        ended = [v for _, v in groups.get("ended", [])]
        return {
            "active": sorted(active, key=lambda op: op.get("created_at") or 0.0),
            "ended": sorted(ended, key=lambda op: op.get("ended_at") or 0.0),
        }
    if kind == "replications":
        jobs = [v for _, v in groups.get("job", [])]
        return {"jobs": sorted(jobs, key=lambda job: job.get("created_at") or 0.0)}
    if kind == "artifacts":
        regions: dict[str, Any] = {}
        for rest, value in sorted(groups.get("copy", [])):
            region_id, _, name = rest.partition("/")
            entry = regions.setdefault(
                region_id, {"endpoint": value.get("endpoint"), "artifacts": {}}
            )
            entry["artifacts"][name] = value.get("sha256")
        return {"regions": regions, "catalog": dict(sorted(groups.get("catalog", [])))}
    raise ValueError(f"{kind} is not kept as entries")
