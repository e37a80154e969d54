"""JSON request bodies: size-limited, parsed with orjson, validated with field paths."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from router.validate import FieldError, ValidationError


async def read_json(request: web.Request, *, required: bool = True) -> Any:
    """The parsed body; 413 past the admin body limit (aiohttp), 400 when not JSON."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ValidationError([FieldError("body", "expected a JSON object")])
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError([FieldError("body", f"invalid JSON: {exc}")]) from None
    if not isinstance(data, dict):
        raise ValidationError([FieldError("body", "expected a JSON object")])
    return data


def check(errors: list[FieldError]) -> None:
    if errors:
        raise ValidationError(errors)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )
