"""Liveness and readiness: /_authproxy/healthz and /_authproxy/readyz."""

from __future__ import annotations

from aiohttp import web

from authproxy.appkeys import LIFECYCLE, LISTENER, METRICS, STORE
from authproxy.errors import StoreUnavailable
from authproxy.http.aio.continuation import defer_continue
from authproxy.http.errormap import json_error
from authproxy.observability.metrics import CONTENT_TYPE

DRAINING_MESSAGE = "This process is shutting down."
DB_DOWN_MESSAGE = "PostgreSQL is not reachable."
LISTENER_DOWN_MESSAGE = "Not yet listening for revocations."


async def healthz(request: web.Request) -> web.Response:
    """The process is up and its event loop answers; no dependency is checked."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic: not draining, PostgreSQL answers, and revocations are heard."""
    if request.app[LIFECYCLE].draining:
        return json_error(503, "draining", DRAINING_MESSAGE)
    try:
        await request.app[STORE].ping()
    except StoreUnavailable:
        return json_error(503, "key_store_unavailable", DB_DOWN_MESSAGE)
    if not request.app[LISTENER].connected.is_set():
        # Until it can hear revocations, this process could serve a revoked key.
        return json_error(503, "revocations_not_heard", LISTENER_DOWN_MESSAGE)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition (prometheus-client), fleet-wide with --workers."""
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def add_routes(app: web.Application, prefix: str) -> None:
    app.router.add_get(prefix + "healthz", healthz, expect_handler=defer_continue)
    app.router.add_get(prefix + "readyz", readyz, expect_handler=defer_continue)
