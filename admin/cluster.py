"""Admin glue for several instances sharing state: the status section and ``stale`` reads.

While the shared store is unreachable, admin reads answer from this instance's last known
state: every admin response then carries ``X-Router-State: stale``, and a JSON object
answered to a GET gains ``"stale": true``. Writes fail on their own with 503
``store_unavailable`` (admin/errors.py).
"""

from __future__ import annotations

import orjson
from aiohttp import web

from admin.errors import Handler
from admin.status import STATUS_EXTRAS
from router.cluster.core import Cluster

CLUSTER = web.AppKey("cluster", Cluster)


def setup(app: web.Application, cluster: Cluster) -> None:
    app[CLUSTER] = cluster
    app[STATUS_EXTRAS].append(cluster.status)
    app.middlewares.append(stale_middleware)


@web.middleware
async def stale_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if not request.app[CLUSTER].stale:
        return response
    response.headers["X-Router-State"] = "stale"
    if (
        request.method == "GET"
        and isinstance(response, web.Response)
        and response.content_type == "application/json"
        and isinstance(response.body, bytes)
    ):
        try:
            doc = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            return response
        if isinstance(doc, dict) and "stale" not in doc:
            doc["stale"] = True
            response.body = orjson.dumps(doc)
    return response
