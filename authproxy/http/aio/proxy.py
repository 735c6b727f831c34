"""The proxy hop: authenticate the Bearer key, then stream the request to the upstream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from authproxy.appkeys import CONFIG, METRICS, STRIP_PREFIXES, TRANSPORT
from authproxy.auth.verdict import Principal
from authproxy.errors import BodyTooLarge, TooManyRequests
from authproxy.http import admission as gate
from authproxy.http.aio.continuation import send_continue
from authproxy.http.headers import client_response_headers, upstream_request_headers
from authproxy.observability.logs import REQUEST_ID
from authproxy.upstream.transport import UpstreamTimeout, UpstreamUnavailable


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    """Every request outside /_authproxy/ that aiohttp's server parsed lands here."""
    refusal = gate.refuse_target(request.raw_path)
    if refusal is not None:
        return refusal
    principal = gate.authenticate(request.app, request.remote or "", request.headers)
    if not isinstance(principal, Principal):
        principal = await principal
    structlog.contextvars.bind_contextvars(space_id=principal.space_id, key_id=principal.key_id)
    outcome, status = "allowed", "502"
    try:
        rate_headers = gate.take_rate(request.app, principal)
        response = await forward(request, principal, rate_headers)
        status = str(response.status)
        return response
    except TooManyRequests:
        outcome, status = "rate_limited", "429"
        raise
    except UpstreamTimeout:
        status = "504"
        raise
    finally:
        request.app[METRICS].count_request(outcome, status)


async def _limited_body(request: web.Request, limit: int,
                        state: dict[str, bool]) -> AsyncIterator[bytes]:
    """The request body, streamed, refusing to pass more than ``limit`` bytes."""
    sent = 0
    async for chunk in request.content.iter_any():
        sent += len(chunk)
        if sent > limit:
            state["too_large"] = True
            raise BodyTooLarge()
        yield chunk


async def forward(request: web.Request, principal: Principal,
                  extra_response_headers: dict[str, str]) -> web.StreamResponse:
    limit = request.app[CONFIG].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge()
    who = gate.identity(request.app, principal, peer=request.remote or "",
                        headers=request.headers, scheme=request.scheme, host=request.host,
                        request_id=request[REQUEST_ID])
    headers = upstream_request_headers(request.headers.items(), who,
                                       request.headers.getall("Connection", []),
                                       request.app[STRIP_PREFIXES])
    state = {"too_large": False}
    body = _limited_body(request, limit, state) if request.body_exists else None
    if body is not None:
        await send_continue(request)  # authorised: now the client may send its body
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
            response.headers.update(extra_response_headers)
            await response.prepare(request)
            async for chunk in up.body:
                await response.write(chunk)
    except (UpstreamTimeout, UpstreamUnavailable) as exc:
        if state["too_large"] and (response is None or not response.prepared):
            raise BodyTooLarge() from None
        if response is None or not response.prepared:
            gate.note_upstream_failure(request.app, exc, mid_stream=False)
            raise
        gate.note_upstream_failure(request.app, exc, mid_stream=True)
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response
