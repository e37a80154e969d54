"""Manual failover as a first-class operation: an id, a reason, an optional expiry, undo."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
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
    def from_json(cls, data: dict[str, Any]) -> FailoverOperation:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class OperationBook:
    """Active operations by region, plus the recently ended ones (bounded)."""

    def __init__(self, keep_ended: int = 200) -> None:
        self.active: dict[str, FailoverOperation] = {}  # region id -> op
        self.ended: list[FailoverOperation] = []
        self.keep_ended = keep_ended

    def get(self, op_id: str) -> FailoverOperation | None:
        for op in self.active.values():
            if op.id == op_id:
                return op
        return next((op for op in self.ended if op.id == op_id), None)

    def start(self, op: FailoverOperation) -> None:
        self.active[op.region] = op

    def end(self, region_id: str, at: float, reason: str) -> FailoverOperation | None:
        op = self.active.pop(region_id, None)
        if op is None:
            return None
        op.state, op.ended_at, op.ended_reason = "ended", at, reason
        self.ended.append(op)
        del self.ended[: -self.keep_ended]
        return op

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

    def load_json(self, data: dict[str, Any]) -> None:
        self.active = {
            op.region: op for op in (FailoverOperation.from_json(d) for d in data.get("active", []))
        }
        self.ended = [FailoverOperation.from_json(d) for d in data.get("ended", [])]
