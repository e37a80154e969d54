"""The dashboard in a real browser: headless Chromium loads the page, signs in with the admin
token, sees the regions table fill in, and sees a region's state change after it is killed.

Needs the Debian packages ``chromium`` (and ``chromium-driver``) and the Python package
``playwright`` (its API only: the system Chromium is used, ``playwright install`` is not
needed). Skipped with the reason when either is missing. The screenshots go to
``$ROUTER_TEST_ARTIFACTS`` (default: ``<tmp>/region-router-artifacts``); the paths are printed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from tests.conftest import StartRouter, make_config

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
HAVE_CHROMIUM = Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not HAVE_PLAYWRIGHT,
        reason="needs the playwright Python package (pip install playwright)",
    ),
    pytest.mark.skipif(
        not HAVE_CHROMIUM,
        reason=f"needs Chromium at {CHROMIUM} (apt-get install chromium chromium-driver, "
        "or set CHROMIUM)",
    ),
]

TOKEN = "dash-board-token"


def artifacts_dir() -> Path:
    base = os.environ.get("ROUTER_TEST_ARTIFACTS") or os.path.join(
        tempfile.gettempdir(), "region-router-artifacts"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def region_app() -> web.Application:
    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


async def test_dashboard_shows_regions_and_a_region_going_down(
    aiohttp_server: AiohttpServer, start_router: StartRouter
) -> None:
    from playwright.async_api import async_playwright, expect

    servers: list[TestServer] = [await aiohttp_server(region_app()) for _ in range(2)]
    config = make_config(
        [
            {"id": "us-east", "name": "US East", "endpoint": f"http://127.0.0.1:{servers[0].port}"},
            {
                "id": "eu-west",
                "name": "EU West",
                "endpoint": f"http://127.0.0.1:{servers[1].port}",
                "priority": 1,
                "weight": 50,
            },
        ],
        admin={"token": TOKEN},
        health_check={
            "path": "/health",
            "interval": "100ms",
            "timeout": "80ms",
            "unhealthy_threshold": 2,
        },
        alerts={"evaluate_interval": "100ms"},
    )
    service = await start_router(config)
    admin = f"http://127.0.0.1:{service.admin_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{admin}/admin/dashboard") as resp:
            assert resp.status == 200  # the page itself needs no token...
            assert resp.headers["Content-Type"].startswith("text/html")
        async with session.get(f"{admin}/admin/dashboard.json") as resp:
            assert resp.status == 401  # ...its data does
        for _ in range(20):
            async with session.get(f"http://127.0.0.1:{service.proxy_port}/x") as resp:
                assert resp.status == 200

    out = artifacts_dir()
    problems: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: _console(msg, problems))
            await page.goto(f"{admin}/admin/dashboard")

            # Asked for the token once; a wrong one is refused with a message.
            await expect(page.locator("#login")).to_be_visible()
            await page.fill("#token", "wrong")
            await page.click("#login-submit")
            await expect(page.locator("#login-error")).to_contain_text("refused")
            await page.fill("#token", TOKEN)
            await page.click("#login-submit")

            rows = page.locator("#regions tbody tr")
            await expect(rows).to_have_count(2)
            us = page.locator('#regions tr[data-region="us-east"]')
            eu = page.locator('#regions tr[data-region="eu-west"]')
            await expect(us.locator("td.state")).to_have_text("healthy")
            await expect(eu.locator("td.state")).to_have_text("healthy")
            await expect(us).to_contain_text("US East")
            await expect(page.locator("#meta")).to_contain_text("strategy round_robin")
            assert await page.evaluate("sessionStorage.length") == 1  # kept for the tab

            # A replication job shows up with its progress.
            job = {
                "kind": "model",
                "name": "fraud-model",
                "path": "/models/fraud.bin",
                "source": "us-east",
                "targets": ["eu-west"],
            }
            async with (
                aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session,
                session.post(f"{admin}/admin/replications", json=job) as resp,
            ):
                assert resp.status == 202, await resp.text()
            jobs = page.locator("#replication")
            await expect(jobs).to_contain_text("model fraud-model")
            await expect(jobs).to_contain_text("1/1 verified")
            await expect(jobs).to_contain_text("eu-west: verified")
            shot = out / "dashboard-healthy.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")

            # Kill a region: its server goes away, health checks fail, the page follows.
            await servers[1].close()
            await expect(eu.locator("td.state")).to_have_text("unhealthy", timeout=10_000)
            await expect(page.locator("#alerts")).to_contain_text("RegionDown", timeout=10_000)
            await expect(page.locator("#transitions")).to_contain_text("eu-west")
            await expect(us.locator("td.state")).to_have_text("healthy")
            shot = out / "dashboard-region-down.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")

            # A reload of the page keeps the session: no second token prompt.
            await page.reload()
            await expect(eu.locator("td.state")).to_have_text("unhealthy")
            await expect(page.locator("#login")).to_be_hidden()
        finally:
            await browser.close()
    assert problems == []
    await asyncio.sleep(0)


def _console(msg: Any, problems: list[str]) -> None:
    if msg.type == "error" and "401" not in msg.text:  # the refused token is expected
        problems.append(f"console: {msg.text}")
