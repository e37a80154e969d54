"""What the Redis store puts on the wire: the Lua scripts that write a change, and its messages.

A write is one script call (``WRITE``): check ``create``, set and delete entries, bump
``<prefix>:seq`` and publish ``"<seq> <change JSON>"`` on ``<prefix>:events``. Health
verdicts arrive on ``<prefix>:health`` as JSON with ``instance`` and ``ttl_ms``. Pure
functions; router/store/redis.py does the I/O.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from router.store.docs import ENTRY_KINDS, encode
from router.store.redis_link import text

WRITE = """
local create = ARGV[2]
if create ~= '' then
  local current = redis.call('HGET', KEYS[1], create)
  if current then return {0, current} end
end
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local deletes = tonumber(ARGV[i])
i = i + 1
for _ = 1, deletes do
  redis.call('HDEL', KEYS[1], ARGV[i])
  i = i + 1
end
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], seq .. ' ' .. ARGV[i])
return {1, seq}
"""

FILL = """
local added = 0
for i = 1, #ARGV, 2 do
  added = added + redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
return added
"""


@dataclass(frozen=True, slots=True)
class Change:
    """One instance's write, as announced: entries set and entry keys deleted in one kind."""

    origin: str | None
    kind: str
    entries: dict[str, Any]
    deleted: list[str]
    at: Any  # the writer's clock, seconds since the epoch


def write_args(
    channel: str,
    instance_id: str,
    kind: str,
    changed: Mapping[str, Any],
    deleted: list[str],
    create: str | None,
) -> list[Any]:
    """ARGV of ``WRITE``: the channel, ``create``, the entries, the deletions, the message."""
    body = orjson.dumps(
        {"from": instance_id, "kind": kind, "at": time.time(), "set": changed, "del": deleted}
    )
    args: list[Any] = [channel, create or "", len(changed)]
    for k, v in changed.items():
        args += [k, encode(v)]
    args += [len(deleted), *deleted, body]
    return args


def fill_args(missing: Mapping[str, Any]) -> list[Any]:
    """ARGV of ``FILL``: key, value, key, value ..."""
    args: list[Any] = []
    for k, v in missing.items():
        args += [k, encode(v)]
    return args


def split_event(data: bytes) -> tuple[int, bytes] | None:
    """An event's sequence number and change body; None when it is not one."""
    head, _, body = data.partition(b" ")
    try:
        return int(head), body
    except ValueError:
        return None


def parse_change(body: bytes) -> Change | None:
    try:
        change = orjson.loads(body)
        kind = str(change["kind"])
        entries: dict[str, Any] = dict(change.get("set") or {})
        deleted = [str(k) for k in change.get("del") or []]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return Change(change.get("from"), kind, entries, deleted, change.get("at"))


def parse_health(data: bytes) -> tuple[str, dict[str, Any], float] | None:
    """Another instance's verdicts: its id, the document, seconds they stay valid."""
    try:
        doc = orjson.loads(data)
        instance = str(doc.pop("instance"))
        ttl_s = float(doc.pop("ttl_ms")) / 1000.0
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return instance, doc, ttl_s


def decode_documents(
    hashes: list[dict[bytes, bytes]], unreadable: Callable[[str, str], None]
) -> dict[str, dict[str, Any]]:
    """``HGETALL`` replies, one per entry kind, as entries; ``unreadable(kind, key)`` each bad."""
    docs: dict[str, dict[str, Any]] = {}
    for kind, raw in zip(ENTRY_KINDS, hashes, strict=True):
        entries: dict[str, Any] = {}
        for k, v in raw.items():
            try:
                entries[text(k)] = orjson.loads(v)
            except orjson.JSONDecodeError:
                unreadable(kind, text(k))
        docs[kind] = entries
    return docs


def decode_history(items: list[bytes]) -> list[Any]:
    """The history list's items, skipping any that is not JSON."""
    out = []
    for raw in items:
        with contextlib.suppress(orjson.JSONDecodeError):
            out.append(orjson.loads(raw))
    return out
