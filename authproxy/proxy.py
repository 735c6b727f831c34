"""The proxy hop: authenticate the Bearer key, then stream the request to the upstream."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from authproxy.appkeys import (
    AUTHENTICATOR,
    CONFIG,
    FAILURES,
    KEY_LIMITS,
    METRICS,
    STRIP_PREFIXES,
    TRANSPORT,
    TRUSTED_PROXIES,
)
from authproxy.auth import Principal
from authproxy.continuation import send_continue
from authproxy.errors import (
    AuthError,
    BodyTooLarge,
    MissingKey,
    Overloaded,
    StoreUnavailable,
    TooManyRequests,
)
from authproxy.headers import (
    Identity,
    client_address,
    client_response_headers,
    forwarded_values,
    upstream_request_headers,
)
from authproxy.httperrors import json_error
from authproxy.keys import KEY_REGEX
from authproxy.log import REQUEST_ID
from authproxy.ratelimit import seconds_header
from authproxy.upstream import UpstreamTimeout, UpstreamUnavailable

log = structlog.get_logger(__name__)

BAD_TARGET_MESSAGE = "The request target must be an absolute path ('/...')."
TOO_MANY_FAILURES_MESSAGE = "Too many refused keys from this address; retry later."
RATE_LIMITED_MESSAGE = "This key's request rate limit is exhausted; retry later."
KEY_IN_QUERY_MESSAGE = ("API keys belong in the Authorization header, never in the URL, "
                        "where logs and browser histories keep them.")
# Anything that looks like one of our keys, anywhere in the query string.
_KEY_IN_QUERY = re.compile(KEY_REGEX)


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    """Every request outside /_authproxy/ lands here."""
    if not request.raw_path.startswith("/"):
        return json_error(400, "bad_request_target", BAD_TARGET_MESSAGE)
    if _KEY_IN_QUERY.search(request.raw_path.partition("?")[2]):
        log.info("key_in_query_refused")
        return json_error(400, "key_in_query", KEY_IN_QUERY_MESSAGE)
    principal = await _authenticate(request)
    structlog.contextvars.bind_contextvars(space_id=principal.space_id, key_id=principal.key_id)
    outcome, status = "allowed", "502"
    try:
        rate_headers = _take_rate(request, principal)
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


async def _authenticate(request: web.Request) -> Principal:
    """The key's Principal; refusals are counted per client and may turn into 429s."""
    metrics, failures = request.app[METRICS], request.app[FAILURES]
    client = client_address(request.remote or "", request.headers, request.app[TRUSTED_PROXIES])
    wait = failures.retry_after(client)
    if wait is not None:
        log.info("client_throttled", client=client)
        metrics.count_request("throttled", "429")
        raise TooManyRequests("too_many_failures", TOO_MANY_FAILURES_MESSAGE,
                              {"Retry-After": seconds_header(wait)})
    started = time.perf_counter()
    try:
        return await request.app[AUTHENTICATOR].authenticate(
            request.headers.getall("Authorization", []))
    except AuthError as exc:
        log.info("auth_refused", reason=exc.reason, detail=str(exc))
        metrics.count_request(exc.reason, "401")
        if not isinstance(exc, MissingKey):
            failures.record_failure(client)
        raise
    except (StoreUnavailable, Overloaded) as exc:
        log.warning("auth_unavailable", error=str(exc))
        metrics.count_request(
            "db_unavailable" if isinstance(exc, StoreUnavailable) else "overloaded", "503")
        raise
    finally:
        metrics.auth_seconds.observe(time.perf_counter() - started)


def _take_rate(request: web.Request, principal: Principal) -> dict[str, str]:
    """Apply the key's token bucket; the RateLimit-* headers for the answer, or 429."""
    rate = principal.rate_limit or request.app[CONFIG].limits.key_rate_per_second
    if rate <= 0:
        return {}
    decision = request.app[KEY_LIMITS].take(principal.key_id, rate)
    burst = request.app[CONFIG].limits.key_burst_seconds
    headers = {"RateLimit-Limit": str(decision.limit),
               "RateLimit-Remaining": str(decision.remaining),
               "RateLimit-Reset": seconds_header(decision.reset),
               "RateLimit-Policy": f"{decision.limit};w={seconds_header(burst)}"}
    if not decision.allowed:
        raise TooManyRequests("rate_limited", RATE_LIMITED_MESSAGE,
                              {**headers, "Retry-After": seconds_header(decision.retry_after)})
    return headers


def _identity(request: web.Request, principal: Principal) -> Identity:
    chain, scheme, host = forwarded_values(
        peer=request.remote or "", headers=request.headers, scheme=request.scheme,
        host=request.host, trusted=request.app[TRUSTED_PROXIES])
    return Identity(
        space_id=principal.space_id, key_id=principal.key_id, key_prefix=principal.prefix,
        request_id=request[REQUEST_ID], client_ip=chain, scheme=scheme, host=host)


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
    headers = upstream_request_headers(request.headers.items(), _identity(request, principal),
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
