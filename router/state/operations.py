"""Manual failover as a first-class operation: an id, a reason, an optional expiry, undo."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

OpState = Literal["active", "ended"]


@dataclass(slots=True, kw_only=True)
class FailoverOperation:
    id: str
    region: str
    target: str | None
    reason: str
    drain_s: float
    created_at: float  # wall clock
    expires_at: float | None  # wall clock
    state: OpState = "active"
    ended_at: float | None = None
    ended_reason: str | None = None

    @staticmethod
    def new_id() -> str:
        return "op-" + secrets.token_hex(6)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> FailoverOperation:
        """Rebuild a stored operation; ``ValueError`` when the data is not one."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an operation object, got {type(data).__name__}")
        try:
            op = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except TypeError as exc:  # a required field missing
            raise ValueError(str(exc)) from None
        for name, kinds in _FIELD_TYPES.items():
            if not isinstance(getattr(op, name), kinds):
                raise ValueError(f"operation field {name!r} has the wrong type")
        if op.state not in ("active", "ended"):
            raise ValueError(f"operation state {op.state!r} is not active or ended")
        return op


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "region": str,
    "target": (str, type(None)),
    "reason": str,
    "drain_s": (int, float),
    "created_at": (int, float),
    "expires_at": (int, float, type(None)),
    "state": str,
    "ended_at": (int, float, type(None)),
    "ended_reason": (str, type(None)),
}


class OperationBook:
    """Active operations by region, plus the recently ended ones (bounded)."""

    def __init__(self, keep_ended: int = 200) -> None:
        self.active: dict[str, FailoverOperation] = {}  # region id -> op
        self.ended: list[FailoverOperation] = []
        self.keep_ended = keep_ended

    def get(self, op_id: str) -> FailoverOperation | None:
        """The operation with this id: the active one, else the latest ended record."""
        for op in self.active.values():
            if op.id == op_id:
                return op
        return next((op for op in reversed(self.ended) if op.id == op_id), None)

    def start(self, op: FailoverOperation) -> None:
        self.active[op.region] = op

    def end(self, region_id: str, at: float, reason: str) -> FailoverOperation | None:
        """End the region's active operation; returns the ended copy (None if none)."""
        op = self.active.pop(region_id, None)
        if op is None:
            return None
        ended = replace(op, state="ended", ended_at=at, ended_reason=reason)
        self.ended.append(ended)
        del self.ended[: -self.keep_ended]
        return ended

    def checkpoint(self) -> tuple[dict[str, FailoverOperation], list[FailoverOperation]]:
        """What ``rollback`` restores (operations are never mutated in place)."""
        return dict(self.active), list(self.ended)

    def rollback(self, saved: tuple[dict[str, FailoverOperation], list[FailoverOperation]]) -> None:
        self.active, self.ended = dict(saved[0]), list(saved[1])

    def expired(self, now_wall: float) -> list[FailoverOperation]:
        return [
            op
            for op in self.active.values()
            if op.expires_at is not None and op.expires_at <= now_wall
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "active": [op.to_json() for op in self.active.values()],
            "ended": [op.to_json() for op in self.ended],
        }

    def load_json(self, data: object) -> None:
        """Replace the book with stored data; ``ValueError`` (book unchanged) when malformed."""
        if not isinstance(data, dict):
            raise ValueError("expected an object with 'active' and 'ended' lists")
        lists = [data.get("active", []), data.get("ended", [])]
        if not all(isinstance(x, list) for x in lists):
            raise ValueError("'active' and 'ended' must be lists")
        active = [FailoverOperation.from_json(d) for d in lists[0]]
        ended = [FailoverOperation.from_json(d) for d in lists[1]]
        self.active = {op.region: op for op in active}
        self.ended = ended[-self.keep_ended :]

    def __repr__(self) -> str:
        return f"<OperationBook active={len(self.active)} ended={len(self.ended)}>"
