"""Liveness, readiness and metrics: /_authproxy/healthz, /_authproxy/readyz, /metrics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from authproxy.errors import StoreUnavailable
from authproxy.http.aio.continuation import defer_continue
from authproxy.http.errormap import json_error
from authproxy.observability.metrics import CONTENT_TYPE, Metrics

DRAINING_MESSAGE = "This process is shutting down."
DB_DOWN_MESSAGE = "PostgreSQL is not reachable."
LISTENER_DOWN_MESSAGE = "Not yet listening for revocations."


@dataclass(slots=True)
class Readiness:
    """Mutable on purpose: shutdown flips ``draining`` so readyz turns 503 first."""

    draining: bool = False


class Pingable(Protocol):
    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""


class Listening(Protocol):
    @property
    def connected(self) -> asyncio.Event:
        """Set while revocations are heard."""


class Health:
    """The probe endpoints, with what they check handed in."""

    def __init__(
        self, *, readiness: Readiness, store: Pingable, listener: Listening, metrics: Metrics
    ) -> None:
        self._readiness = readiness
        self._store = store
        self._listener = listener
        self._metrics = metrics

    async def healthz(self, request: web.Request) -> web.Response:
        """The process is up and its event loop answers; no dependency is checked."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Ready for traffic: not draining, PostgreSQL answers, and revocations are heard."""
        if self._readiness.draining:
            return json_error(503, "draining", DRAINING_MESSAGE)
        try:
            await self._store.ping()
        except StoreUnavailable:
            return json_error(503, "key_store_unavailable", DB_DOWN_MESSAGE)
        if not self._listener.connected.is_set():
            # Until it can hear revocations, this process could serve a revoked key.
            return json_error(503, "revocations_not_heard", LISTENER_DOWN_MESSAGE)
        return web.json_response({"status": "ready"})

    def add_routes(self, router: web.UrlDispatcher, prefix: str) -> None:
        router.add_get(prefix + "healthz", self.healthz, expect_handler=defer_continue)
        router.add_get(prefix + "readyz", self.readyz, expect_handler=defer_continue)


def metrics_handler(metrics: Metrics) -> Handler:
    """Prometheus text exposition (prometheus-client), fleet-wide with --workers."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    return handler
