"""Typed aiohttp application keys shared by the admin modules."""

from __future__ import annotations

from aiohttp import web

from router.control.core import Control
from router.runtime import Runtime

RUNTIME = web.AppKey("runtime", Runtime)
CONTROL = web.AppKey("control", Control)
