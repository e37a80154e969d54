"""JSON request bodies: size-limited, parsed with orjson, validated with field paths."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from admin.keys import CONTROL
from router.config.loader import AdminConfig
from router.config.validate import FieldError, ValidationError


async def read_body(request: web.Request) -> bytes:
    """The raw body, at most ``admin.max_body`` bytes (read from the live config): else 413.

    Read here rather than through aiohttp's ``client_max_size`` so a reload that changes
    the limit applies at once, and a chunked body is cut off as soon as it is too large.
    """
    control = request.app.get(CONTROL)
    config = control.registry.config.admin if control is not None else AdminConfig()
    limit = config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(
            max_size=limit,
            actual_size=request.content_length,
            text=f"request body is {request.content_length} bytes; the limit is {limit}",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(
                max_size=limit,
                actual_size=size,
                text=f"request body exceeds the limit of {limit} bytes",
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The parsed body object; 413 past the admin body limit, 400 when not a JSON object.

    ``required=False``: an empty body reads as ``{}`` (all fields optional).
    """
    raw = await read_body(request)
    if not raw.strip():
        if required:
            raise ValidationError([FieldError("body", "expected a JSON object, got nothing")])
        return {}
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationError([FieldError("body", f"invalid JSON: {exc}")]) from None
    if not isinstance(data, dict):
        kind = "an array" if isinstance(data, list) else type(data).__name__
        raise ValidationError([FieldError("body", f"expected a JSON object, got {kind}")])
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
