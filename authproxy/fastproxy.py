"""The proxy hop for requests the fast front end parsed (fastconn.py): gate, forward, answer.

The same decisions as proxy.py (they live in gate.py) and the same answers: error bodies
come from httperrors, the access line and log context are log.py's, headers are framed
the way aiohttp frames them. Only the writing differs: straight to the socket.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Final, cast

import structlog
from aiohttp.helpers import must_be_empty_body, rfc822_formatted_time, should_remove_content_length
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web import Response
from multidict import CIMultiDict

from authproxy import gate
from authproxy.appkeys import METRICS, STRIP_PREFIXES, TRANSPORT
from authproxy.errors import TooManyRequests
from authproxy.h1client import H1Transport, encode_fields
from authproxy.headers import (
    HOP_BY_HOP,
    REQUEST_ID_FROM_END,
    X_REQUEST_ID,
    client_response_headers,
    connection_tokens,
    request_id_from,
    upstream_request_fields,
)
from authproxy.httperrors import error_response, json_error
from authproxy.log import CLIENT_CLOSED_REQUEST, INTERNAL_ERROR_MESSAGE
from authproxy.principal import Principal
from authproxy.upstream import UpstreamResponse, UpstreamTimeout, UpstreamUnavailable

if TYPE_CHECKING:
    from authproxy.fastconn import FastConnection
    from authproxy.fasthead import FastRequest

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
                head, chunked = _head(request, up.status, up.reason, up.raw_headers,
                                      rate_headers, request_id, keep_alive)
                conn.head_sent = True
                whole = up.take_whole_body() if up.take_whole_body is not None else None
                if whole is not None:  # the common small answer: one write
                    conn.write(head + _framed(whole, chunked, last=True))
                    return up.status
                conn.write(head)
                async for chunk in up.body:
                    if chunk:
                        conn.write(_framed(chunk, chunked, last=False))
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


def _framed(data: bytes, chunked: bool, *, last: bool) -> bytes:
    if not chunked:
        return data
    framed = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
    return framed + b"0\r\n\r\n" if last else framed


# Upstream response header names _head treats specially, by lower-cased name.
_DROP, _CONNECTION, _LENGTH, _TYPE, _DATE, _SERVER = range(6)
_SPECIAL: Final = {**dict.fromkeys((n.encode() for n in HOP_BY_HOP - {"connection"}), _DROP),
                   b"connection": _CONNECTION, b"x-request-id": _DROP,
                   b"content-length": _LENGTH, b"content-type": _TYPE, b"date": _DATE,
                   b"server": _SERVER}
_SERVER_LINE: Final = f"Server: {SERVER_SOFTWARE}".encode()
Fields = Iterable[tuple[bytes, bytes]]


def _head(request: FastRequest, status: int, reason: str, upstream: Fields,
          extra: Mapping[str, str], request_id: str, keep_alive: bool) -> tuple[bytes, bool]:
    """Status line and headers, framed as aiohttp frames them; and whether chunked.

    One pass over the upstream's header fields, as bytes (they are copied, not decoded),
    drops hop-by-hop ones (headers.py's rule) and notes the framing ones; this runs on
    every request.
    """
    method = request.method
    empty = must_be_empty_body(method, status)
    overridden = {name.lower().encode("latin-1") for name in extra} if extra else None
    # As the whole head was encoded before: UTF-8 keeping stray bytes (aiohttp decodes a
    # reason that way, h1connection as latin-1; either way no answer fails on it).
    lines = [b"HTTP/1.1 %d %s" % (status, reason.encode("utf-8", "surrogateescape"))]
    length: bytes | None = None
    has_type = has_date = has_server = False
    for name, value in upstream:
        lower = name.lower()
        kind = _SPECIAL.get(lower)
        if kind is not None:
            if kind == _DROP:
                continue
            if kind == _CONNECTION:
                if connection_tokens([value.decode("latin-1")]) - HOP_BY_HOP - {"close"}:
                    # Rare: the upstream's Connection header names more headers to drop.
                    return _head(request, status, reason, _without_listed(upstream), extra,
                                 request_id, keep_alive)
                continue
            if kind == _LENGTH:
                if empty and should_remove_content_length(method, status):
                    continue
                length = value.strip()
            elif kind == _TYPE:
                has_type = True
            elif kind == _DATE:
                has_date = True
            else:
                has_server = True
        if overridden is not None and lower in overridden:
            continue
        lines.append(name + b": " + value)
    if extra:
        lines.extend(f"{name}: {value}".encode("latin-1") for name, value in extra.items())
    lines.append(b"X-Request-Id: " + request_id.encode("ascii"))
    chunked = not empty and length is None
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
    if not empty and length != b"0" and not has_type:
        lines.append(b"Content-Type: application/octet-stream")
    if not has_date:
        lines.append(b"Date: " + rfc822_formatted_time().encode("ascii"))
    if not has_server:
        lines.append(_SERVER_LINE)
    if not keep_alive:
        lines.append(b"Connection: close")
    lines.append(b"\r\n")
    return b"\r\n".join(lines), chunked


def _without_listed(fields: Fields) -> list[tuple[bytes, bytes]]:
    """headers.client_response_headers on raw fields (latin-1 keeps every byte)."""
    kept = client_response_headers([(n.decode("latin-1"), v.decode("latin-1"))
                                    for n, v in fields])
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in kept]


def _write_response(conn: FastConnection, request: FastRequest, response: Response,
                    request_id: str, keep_alive: bool) -> None:
    """Send one of our own complete answers (errors, refusals)."""
    body = response.body if isinstance(response.body, bytes) else b""
    headers = [(name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
               for name, value in response.headers.items()]
    headers.append((b"Content-Length", b"%d" % len(body)))
    head, _ = _head(request, response.status, response.reason, headers, {}, request_id,
                    keep_alive)
    conn.head_sent = True
    conn.write(head if must_be_empty_body(request.method, response.status) else head + body)
