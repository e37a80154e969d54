"""Pickling of snapshots for the supervisor-to-worker channel.

Snapshots are frozen dataclasses with read-only mappings (``MappingProxyType``), which
pickle cannot handle by itself; registering a reducer here makes a whole snapshot one
``pickle.dumps`` away. The channel is a local socketpair between processes we started.
"""

from __future__ import annotations

import copyreg
import pickle
from types import MappingProxyType
from typing import Any


def _mapping_proxy(data: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(data)


def _reduce_mapping_proxy(m: MappingProxyType[Any, Any]) -> tuple[Any, tuple[dict[Any, Any]]]:
    return _mapping_proxy, (dict(m),)


copyreg.pickle(MappingProxyType, _reduce_mapping_proxy)


def dumps(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    return pickle.loads(data)  # only from our own processes over a socketpair
