"""Admin errors rendered once, in the CONTRACT's shape: {"error": {code, message, details}}."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from router.errors import NotFound, RegionConflict
from router.validate import ValidationError


def json_error(status: int, code: str, message: str, details: Any = None) -> web.Response:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if details is not None:
        body["error"]["details"] = details
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ValidationError as exc:
        return json_error(400, "invalid", "; ".join(map(str, exc.errors)), exc.as_details())
    except NotFound as exc:
        return json_error(404, "not_found", str(exc))
    except RegionConflict as exc:
        return json_error(409, "conflict", str(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        return json_error(413, "body_too_large", exc.text or "request body too large")
    except web.HTTPException as exc:
        if exc.status >= 400:
            code = exc.reason.lower().replace(" ", "_")
            return json_error(exc.status, code, exc.text or exc.reason)
        raise
