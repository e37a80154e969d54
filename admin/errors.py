"""Admin errors rendered once, in the CONTRACT's shape: {"error": {code, message, details}}."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from router.config.validate import ValidationError
from router.errors import NotFound, RegionConflict
from router.store.files import StoreWriteError

log = logging.getLogger("admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, code: str, message: str, details: Any = None) -> web.Response:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if details is not None:
        body["error"]["details"] = details
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def classify(exc: Exception) -> tuple[int, str, str, Any] | None:
    """(status, code, message, details) for an exception the admin API answers; else None.

    Shared by the error middleware and the compatibility endpoint's envelope.
    """
    if isinstance(exc, ValidationError):
        return 400, "invalid", "; ".join(map(str, exc.errors)), exc.as_details()
    if isinstance(exc, NotFound):
        return 404, "not_found", str(exc), None
    if isinstance(exc, RegionConflict):
        return 409, "conflict", str(exc), None
    if isinstance(exc, StoreWriteError):
        return 503, "store_unavailable", f"{exc}; nothing was changed", None
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return 413, "body_too_large", exc.text or "request body too large", None
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason, None
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        known = classify(exc)
        if known is None:
            if isinstance(exc, web.HTTPException):
                raise  # redirects and other non-errors
            log.exception("admin %s %s failed", request.method, request.path)
            return json_error(500, "internal", f"internal error: {type(exc).__name__}")
        status, code, message, details = known
        return json_error(status, code, message, details)
