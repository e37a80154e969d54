"""The compatibility endpoint's handler table: an operation is unknown until its feature
registers it, and listed once it is."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pytest_aiohttp import AiohttpClient

from admin import compat


async def test_an_operation_is_unknown_until_a_handler_is_registered(
    aiohttp_client: AiohttpClient,
) -> None:
    app = web.Application()
    compat.setup(app)

    async def replicate(request: web.Request, params: dict[str, Any]) -> Any:
        return compat.Reply({"jobId": "job-1", "modelId": params["modelId"]}, 202)

    client = await aiohttp_client(app)
    body = {"operation": "replicate-model", "modelId": "fraud", "regionId": "eu-west-1"}
    resp = await client.post(compat.PATH, json=body)
    assert resp.status == 400
    answer = await resp.json()
    assert answer == {
        "success": False,
        "error": "Unknown operation: replicate-model",
        "timestamp": answer["timestamp"],
    }
    listing = await (await client.get(compat.PATH)).json()
    assert "replicate-model" not in listing["data"]["post"]

    compat.register(app, "POST", "replicate-model", replicate)
    listing = await (await client.get(compat.PATH)).json()
    assert "replicate-model" in listing["data"]["post"]
    resp = await client.post(compat.PATH, json=body)
    assert resp.status == 202
    answer = await resp.json()
    assert answer["success"] is True
    assert answer["data"] == {"jobId": "job-1", "modelId": "fraud"}
    assert answer["timestamp"].endswith("Z")
    # GET and POST tables are separate: a POST operation is unknown as a GET one
    resp = await client.get(compat.PATH, params={"operation": "replicate-model"})
    assert resp.status == 400


async def test_a_handler_error_is_rendered_in_the_envelope(aiohttp_client: AiohttpClient) -> None:
    app = web.Application()
    compat.setup(app)

    async def fails(request: web.Request, params: dict[str, Any]) -> Any:
        raise compat.CompatError(422, "modelId must name a model")

    compat.register(app, "GET", "explode", fails)
    client = await aiohttp_client(app)
    resp = await client.get(compat.PATH, params={"operation": "explode"})
    assert resp.status == 422
    assert (await resp.json())["error"] == "modelId must name a model"
