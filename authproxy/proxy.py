"""The proxy hop: authenticate the Bearer key, then stream the request to the upstream."""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from authproxy.appkeys import AUTHENTICATOR, METRICS, TRANSPORT
from authproxy.auth import Principal
from authproxy.errors import AuthError, StoreUnavailable
from authproxy.headers import (
    Identity,
    client_response_headers,
    upstream_request_headers,
)
from authproxy.httperrors import json_error
from authproxy.log import REQUEST_ID
from authproxy.upstream import UpstreamTimeout, UpstreamUnavailable

log = structlog.get_logger(__name__)

BAD_TARGET_MESSAGE = "The request target must be an absolute path ('/...')."


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    """Every request outside /_authproxy/ lands here."""
    if not request.raw_path.startswith("/"):
        return json_error(400, "bad_request_target", BAD_TARGET_MESSAGE)
    metrics = request.app[METRICS]
    started = time.perf_counter()
    try:
        principal = await request.app[AUTHENTICATOR].authenticate(
            request.headers.getall("Authorization", []))
    except AuthError as exc:
        log.info("auth_refused", reason=exc.reason, detail=str(exc))
        metrics.requests.labels(outcome=exc.reason, status="401").inc()
        raise
    except StoreUnavailable as exc:
        log.warning("auth_unavailable", error=str(exc))
        metrics.requests.labels(outcome="db_unavailable", status="503").inc()
        raise
    finally:
        metrics.auth_seconds.observe(time.perf_counter() - started)
    structlog.contextvars.bind_contextvars(space_id=principal.space_id, key_id=principal.key_id)
    status = "502"
    try:
        response = await forward(request, principal)
        status = str(response.status)
        return response
    except UpstreamTimeout:
        status = "504"
        raise
    finally:
        metrics.requests.labels(outcome="allowed", status=status).inc()


async def forward(request: web.Request, principal: Principal) -> web.StreamResponse:
    identity = Identity(
        space_id=principal.space_id, key_id=principal.key_id, key_prefix=principal.prefix,
        request_id=request[REQUEST_ID], client_ip=request.remote or "",
        scheme=request.scheme, host=request.host,
    )
    headers = upstream_request_headers(
        request.headers.items(), identity, request.headers.getall("Connection", []))
    body = request.content if request.body_exists else None
    transport = request.app[TRANSPORT]
    metrics = request.app[METRICS]
    response: web.StreamResponse | None = None
    sent = time.perf_counter()
    try:
        async with transport.request(request.method, request.raw_path, headers, body) as up:
            metrics.upstream_seconds.observe(time.perf_counter() - sent)
            response = web.StreamResponse(status=up.status, reason=up.reason)
            for name, value in client_response_headers(up.headers):
                response.headers.add(name, value)
            await response.prepare(request)
            async for chunk in up.body:
                await response.write(chunk)
    except (UpstreamTimeout, UpstreamUnavailable) as exc:
        if response is None or not response.prepared:
            kind = "timeout" if isinstance(exc, UpstreamTimeout) else "unavailable"
            metrics.upstream_errors.labels(kind=kind).inc()
            log.warning("upstream_failed", error=type(exc).__name__, detail=str(exc))
            raise
        metrics.upstream_errors.labels(kind="aborted_mid_stream").inc()
        # Headers are already out: the only honest signal left is to cut the connection,
        # so the client sees a truncated body instead of a complete-looking one.
        log.warning("upstream_stream_aborted", error=type(exc).__name__, detail=str(exc))
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response
