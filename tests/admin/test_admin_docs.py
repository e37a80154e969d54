"""docs/admin-api.md documents every admin route this package serves."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from admin import compat, explain, regions, status

DOC = Path(__file__).resolve().parents[2] / "docs" / "admin-api.md"


def test_every_admin_route_has_a_section_with_an_example() -> None:
    text = DOC.read_text()
    paths = {compat.PATH, "/healthz", "/readyz", "/metrics"}
    for table in (regions.routes, status.routes, explain.routes):
        for route in table:
            assert isinstance(route, web.RouteDef)
            paths.add(route.path)
    for path in sorted(paths):
        assert f"`{path}" in text or f" {path}" in text, f"{path} is not documented"
        example = path.split("{", 1)[0].rstrip("/")
        assert f"$ADMIN{example}" in text, f"no curl example for {path}"
