"""The proxy hop for requests the fast front end parsed (fastconn.py): gate, forward, answer.

The same decisions as proxy.py (they live in gate.py) and the same answers: error bodies
come from httperrors, the access line and log context are log.py's, headers are framed
the way aiohttp frames them (responsehead.py). Only the writing differs: straight to the
socket.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, cast

import structlog
from aiohttp.helpers import must_be_empty_body
from aiohttp.web import Response
from multidict import CIMultiDict

from authproxy.appkeys import METRICS, STRIP_PREFIXES, TRANSPORT
from authproxy.auth.verdict import Principal
from authproxy.errors import TooManyRequests
from authproxy.http import admission as gate
from authproxy.http.errormap import error_response, json_error
from authproxy.http.fast.response_head import framed, response_head
from authproxy.http.headers import (
    REQUEST_ID_FROM_END,
    X_REQUEST_ID,
    request_id_from,
    upstream_request_fields,
)
from authproxy.observability.logs import CLIENT_CLOSED_REQUEST, INTERNAL_ERROR_MESSAGE
from authproxy.upstream.h1pool import H1Transport, encode_fields
from authproxy.upstream.transport import UpstreamResponse, UpstreamTimeout, UpstreamUnavailable

if TYPE_CHECKING:
    from authproxy.http.fast.connection import FastConnection
    from authproxy.http.fast.head import FastRequest

log = structlog.get_logger(__name__)



async def answer(conn: FastConnection, request: FastRequest) -> bool:
    """Answer one request on ``conn``; whether the connection may carry another one.

    Mirrors log.request_context: request id, log context, access line, and a JSON answer
    for every error (500 for the unexpected), so the daemon keeps serving.
    """
    started = time.perf_counter()
    request_id = request_id_from(request.headers.get(X_REQUEST_ID))
    # No clear_contextvars(): fastconn runs each request in a task with a fresh context.
    structlog.contextvars.bind_contextvars(
        request_id=request_id, method=request.method,
        path=request.target.split("?", 1)[0])
    keep_alive = request.keep_alive and not conn.closing
    try:
        status = await _proxy(conn, request, request_id, keep_alive)
        # Flow control: the next pipelined request waits until the client reads this one,
        # so a client that never reads cannot make us buffer answers without limit.
        if conn.must_drain():
            await conn.drain()
    except ConnectionError:
        log.info("client_disconnected")
        status, keep_alive = CLIENT_CLOSED_REQUEST, False
    except Exception as exc:  # noqa: BLE001 - the one catch-all, as in log.py; logged there
        status, keep_alive = await _answer_error(conn, request, exc, request_id, keep_alive)
    log.info("request", status=status,
             duration_ms=round((time.perf_counter() - started) * 1000, 3), remote=conn.peer)
    return keep_alive


async def _answer_error(conn: FastConnection, request: FastRequest, exc: Exception,
                        request_id: str, keep_alive: bool) -> tuple[int, bool]:
    """Answer an error as JSON; (status, keep-alive). Once a head is out, cut instead."""
    response = error_response(exc)
    if response is None:
        log.error("unhandled_error", exc_info=True)
        response = json_error(500, "internal_error", INTERNAL_ERROR_MESSAGE)
    if conn.head_sent:  # a second head inside a body would corrupt the stream
        conn.abort()
        return response.status, False
    try:
        _write_response(conn, request, response, request_id, keep_alive)
        await conn.drain()
    except ConnectionError:
        return CLIENT_CLOSED_REQUEST, False
    return response.status, keep_alive


async def _proxy(conn: FastConnection, request: FastRequest, request_id: str,
                 keep_alive: bool) -> int:
    """Gate and forward; the status sent. Raises what the error table maps."""
    refusal = gate.refuse_target(request.target)
    if refusal is not None:
        _write_response(conn, request, refusal, request_id, keep_alive)
        return refusal.status
    app = conn.app
    headers = request.headers
    principal = gate.authenticate(app, conn.peer, headers)
    if not isinstance(principal, Principal):
        principal = await principal
    structlog.contextvars.bind_contextvars(space_id=principal.space_id, key_id=principal.key_id)
    metrics = app[METRICS]
    outcome, status = "allowed", "502"
    try:
        rate_headers = gate.take_rate(app, principal)
        sent = time.perf_counter()
        try:
            async with _upstream_request(conn, request, principal, request_id) as up:
                metrics.upstream_seconds.observe(time.perf_counter() - sent)
                status = str(up.status)
                head, chunked = response_head(request.method, up.status, up.reason,
                                              up.raw_headers, rate_headers, request_id,
                                              keep_alive)
                conn.head_sent = True
                whole = up.take_whole_body() if up.take_whole_body is not None else None
                if whole is not None:  # the common small answer: one write
                    conn.write(head + framed(whole, chunked, last=True))
                    return up.status
                conn.write(head)
                async for chunk in up.body:
                    if chunk:
                        conn.write(framed(chunk, chunked, last=False))
                        await conn.drain()
                if chunked:
                    conn.write(b"0\r\n\r\n")
        except (UpstreamTimeout, UpstreamUnavailable) as exc:
            gate.note_upstream_failure(app, exc, mid_stream=conn.head_sent)
            if not conn.head_sent:
                status = "504" if isinstance(exc, UpstreamTimeout) else "502"
                raise
            conn.abort()
        return int(status)
    except TooManyRequests:
        outcome, status = "rate_limited", "429"
        raise
    finally:
        metrics.count_request(outcome, status)


def _upstream_request(conn: FastConnection, request: FastRequest, principal: Principal,
                      request_id: str) -> AbstractAsyncContextManager[UpstreamResponse]:
    """The upstream exchange for this request.

    With the h1 transport, a connection's repeated request (the same header block, which
    fasthead's FieldMemo hands over as the same object, and an equal Principal: a cache
    hit makes a new one each time) reuses the encoded fields of the one before: the
    upstream's fields depend on nothing else but the request id, which is put back in its
    place here.
    """
    app, headers = conn.app, request.headers
    transport = app[TRANSPORT]
    encoded = isinstance(transport, H1Transport)
    memo = conn.upstream_fields
    if encoded and memo is not None and memo[0] is headers and memo[1] == principal:
        before, after = memo[2], memo[3]
    else:
        who = gate.identity(app, principal, peer=conn.peer, headers=headers, scheme="http",
                            host=headers["Host"], request_id=request_id)
        fields = upstream_request_fields(headers.items(), who, headers.getall("Connection", []),
                                         app[STRIP_PREFIXES])
        if not encoded:
            return transport.request(request.method, request.target, CIMultiDict(fields),
                                     None)
        at = len(fields) + REQUEST_ID_FROM_END
        before, after = encode_fields(fields[:at]), encode_fields(fields[at + 1:])
        conn.upstream_fields = (headers, principal, before, after)
    return cast(H1Transport, transport).request_encoded(
        request.method, request.target,
        b"%sX-Request-Id: %s\r\n%s" % (before, request_id.encode("ascii"), after))


def _write_response(conn: FastConnection, request: FastRequest, response: Response,
                    request_id: str, keep_alive: bool) -> None:
    """Send one of our own complete answers (errors, refusals)."""
    body = response.body if isinstance(response.body, bytes) else b""
    headers = [(name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
               for name, value in response.headers.items()]
    headers.append((b"Content-Length", b"%d" % len(body)))
    head, _ = response_head(request.method, response.status, response.reason, headers, {},
                            request_id, keep_alive)
    conn.head_sent = True
    conn.write(head if must_be_empty_body(request.method, response.status) else head + body)
