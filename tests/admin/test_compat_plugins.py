"""The compatibility endpoint's handler table: stubs answer 501 until a feature registers."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pytest_aiohttp import AiohttpClient

from admin import compat


async def test_unbuilt_operations_answer_501_until_a_handler_is_registered(
    aiohttp_client: AiohttpClient,
) -> None:
    app = web.Application()
    compat.setup(app)

    async def replicate(request: web.Request, params: dict[str, Any]) -> Any:
        return compat.Reply({"jobId": "job-1", "modelId": params["modelId"]}, 202)

    client = await aiohttp_client(app)
    body = {"operation": "replicate-model", "modelId": "fraud", "regionId": "eu-west-1"}
    resp = await client.post(compat.PATH, json=body)
    assert resp.status == 501
    answer = await resp.json()
    assert answer["success"] is False and "replicate-model" in answer["error"]
    resp = await client.post(compat.PATH, json={"operation": "aggregate-metrics"})
    assert resp.status == 501

    compat.register(app, "POST", "replicate-model", replicate)
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
