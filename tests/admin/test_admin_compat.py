"""/api/multi-region: the old multi-region API's documented calls, sent as its clients send
them (query strings and raw JSON bodies), answered in its envelope."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import orjson
from pytest_aiohttp import AiohttpServer

from tests.admin.client import Admin, spread, steady_config
from tests.backends import start_region
from tests.conftest import StartRouter

ISO_8601 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


class OldClient:
    """``curl -s [-X POST -d '<json>'] 'http://admin/api/multi-region?...'``"""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.url = f"http://127.0.0.1:{port}/api/multi-region"

    async def get(self, query: str) -> tuple[int, Any]:
        async with self.session.get(f"{self.url}?{query}") as resp:
            return resp.status, await self._body(resp)

    async def post(self, raw_json: str) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        async with self.session.post(self.url, data=raw_json.encode(), headers=headers) as resp:
            return resp.status, await self._body(resp)

    @staticmethod
    async def _body(resp: aiohttp.ClientResponse) -> Any:
        assert resp.content_type == "application/json"
        body = orjson.loads(await resp.read())
        assert ISO_8601.fullmatch(body["timestamp"]), body
        assert isinstance(body["success"], bool)
        if body["success"]:
            assert "data" in body
        else:
            assert isinstance(body["error"], str) and body["error"]
        return body


async def test_the_old_api_calls_work_through_the_compatibility_endpoint(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    us = await start_region(aiohttp_server, "us-east-1")
    eu = await start_region(aiohttp_server, "eu-west-1")
    config = steady_config([us.config(name="US East")], strategy="latency")
    service = await start_router(config)
    async with aiohttp.ClientSession() as session:
        old = OldClient(session, service.admin_port)
        admin = Admin(session, service.admin_port)

        status, body = await old.post(
            '{"operation": "register-region", "id": "eu-west-1", "name": "EU West", '
            f'"endpoint": "{eu.url}"}}'
        )
        assert status == 201, body
        assert body["success"] is True
        assert body["data"]["id"] == "eu-west-1" and body["data"]["name"] == "EU West"
        assert body["data"]["source"] == "runtime"
        await admin.wait_state("eu-west-1", "healthy")

        status, body = await old.get("operation=status&regionId=eu-west-1")
        assert status == 200
        assert body["data"]["id"] == "eu-west-1" and body["data"]["status"] == "healthy"
        assert "latency_ms" in body["data"]

        status, body = await old.get("operation=global-status")
        assert status == 200
        assert [r["id"] for r in body["data"]["regions"]] == ["us-east-1", "eu-west-1"]
        assert body["data"]["config_hash"] == config.config_hash

        status, body = await old.get("operation=best-region&strategy=latency")
        assert status == 200
        assert body["data"]["bestRegion"]["id"] in {"us-east-1", "eu-west-1"}
        assert body["data"]["strategy"] == "latency"
        status, body = await old.get("operation=best-region")
        assert status == 200 and body["data"]["bestRegion"]["id"]

        status, body = await old.post(
            '{"operation": "route-request", '
            '"request": {"endpoint": "/api/predict", "method": "POST"}, "strategy": "latency"}'
        )
        assert status == 200, body
        data = body["data"]
        assert data["regionId"] in {"us-east-1", "eu-west-1"}
        assert data["region"]["id"] == data["regionId"] == data["winner"]
        assert data["request"] == {"method": "POST", "path": "/api/predict", "host": ""}
        assert {c["id"] for c in data["candidates"]} == {"us-east-1", "eu-west-1"}
        assert data["reason"]

        status, body = await old.post(
            '{"operation": "initiate-failover", "fromRegionId": "us-east-1", '
            '"toRegionId": "eu-west-1", "reason": "maintenance"}'
        )
        assert status == 202, body
        op = body["data"]["operation"]
        assert body["data"]["operationId"] == op["id"]
        assert op["region"] == "us-east-1" and op["target"] == "eu-west-1"
        assert op["reason"] == "maintenance"
        assert await spread(session, service.proxy_port, 6) == {"eu-west-1": 6}
        status, body = await old.post('{"operation": "initiate-failover", "regionId": "us-east-1"}')
        assert status == 409 and body["success"] is False
        assert "already failed over" in body["error"]

        status, body = await old.get("operation=failover-status")
        assert status == 200
        states = {r["id"]: r["state"] for r in body["data"]["regions"]}
        assert states == {"us-east-1": "failed_over", "eu-west-1": "healthy"}
        assert body["data"]["active_operations"][0]["id"] == op["id"]
        assert body["data"]["history"][0]["to"] == "failed_over"

        status, body = await old.get("operation=global-dashboard")
        assert status == 200 and body["success"] is True
        assert isinstance(body["data"], dict) and body["data"]

        status, body = await old.post('{"operation": "recover-region", "regionId": "us-east-1"}')
        assert status == 202, body
        assert body["data"]["operation"]["state"] == "ended"
        await admin.wait_state("us-east-1", "healthy", "recovering")


async def test_the_old_api_errors_keep_its_envelope(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    us = await start_region(aiohttp_server, "us-east-1")
    service = await start_router(steady_config([us.config()]))
    async with aiohttp.ClientSession() as session:
        old = OldClient(session, service.admin_port)
        status, body = await old.get("")
        assert status == 200 and "global-status" in body["data"]["get"]
        assert "register-region" in body["data"]["post"]
        cases: list[tuple[str, int, str]] = [
            ('{"operation": "teleport"}', 400, "Unknown operation: teleport"),
            ('{"id": "x"}', 400, "operation required"),
            ("{not json", 400, "invalid JSON"),
            ('["register-region"]', 400, "JSON object"),
            ('{"operation": "register-region", "id": "x"}', 400, "endpoint: required"),
            ('{"operation": "initiate-failover"}', 400, "regionId: required"),
            ('{"operation": "initiate-failover", "regionId": "nope"}', 404, "nope"),
            (
                '{"operation": "initiate-failover", "regionId": "us-east-1", "toRegionId": "x"}',
                404,
                "'x'",
            ),
            ('{"operation": "recover-region"}', 400, "regionId: required"),
            ('{"operation": "route-request"}', 400, "request: required"),
            ('{"operation": "route-request", "request": {}, "strategy": "x"}', 400, "strategy"),
        ]
        for raw, want_status, want_text in cases:
            status, body = await old.post(raw)
            assert (status, body["success"]) == (want_status, False), (raw, body)
            assert want_text in body["error"], (raw, body)
        for query, want_status, want_text in [
            ("operation=status", 400, "regionId required"),
            ("operation=status&regionId=nope", 404, "nope"),
            ("operation=unknown-op", 400, "Unknown operation"),
        ]:
            status, body = await old.get(query)
            assert (status, body["success"]) == (want_status, False), (query, body)
            assert want_text in body["error"]
        await old.post('{"operation": "initiate-failover", "regionId": "us-east-1"}')
        status, body = await old.get("operation=best-region")
        assert status == 503 and body["success"] is False
        status, body = await old.post(
            '{"operation": "route-request", "request": {"endpoint": "/x", "method": "GET"}}'
        )
        assert status == 503 and "503" in body["error"]
