"""aiohttp's server as a front end: its requests into the shared lifecycle, answers back out.

aiohttp serves what the lean front end (http/fast/) hands over or never takes: requests
with a body, HTTP/1.0, the reserved /_authproxy/ paths, anything unusual. One middleware
(``entry``) sends every request through RequestLifecycle.serve; paths outside the reserved
prefix go to RequestLifecycle.proxy whatever aiohttp's router matched, the verify path to
RequestLifecycle.verify, the rest to our routes. ``AioExchange`` is the only place that
touches web.Request and StreamResponse.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from typing import Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDictProxy

from authproxy.auth.verdict import Principal
from authproxy.config.schema import Config
from authproxy.http.aio.continuation import send_continue
from authproxy.http.errormap import json_error
from authproxy.http.exchange import UpstreamFieldsMemo
from authproxy.http.headers import X_REQUEST_ID, client_response_headers
from authproxy.http.lifecycle import RequestLifecycle
from authproxy.http.reserved import is_reserved, is_verify
from authproxy.http.tunnel import ClientConnection
from authproxy.upstream.transport import UpstreamResponse

# The request id, for handlers that record it (the admin API's audit trail).
REQUEST_ID: Final = web.RequestKey("request_id", str)
# The catch-all route: it exists so aiohttp's router never answers 404/405 on its own.
PROXY_ROUTE: Final = "proxy"
NOT_FOUND_MESSAGE: Final = "No such authproxy endpoint."


class AioExchange:
    """One aiohttp request as the lifecycle's Exchange."""

    __slots__ = ("_request_id", "_switched", "original", "principal", "request", "response")

    upstream_memo: UpstreamFieldsMemo | None = None  # aiohttp's requests are the rarer kind
    header_lines: None = None  # (aiohttp's parser keeps no encoded lines)

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None  # once its head is out
        self._request_id = ""
        self.principal: Principal | None = None
        self.original: tuple[str, str] | None = None
        self._switched = False

    @property
    def request_id(self) -> str:
        return self._request_id

    @request_id.setter
    def request_id(self, value: str) -> None:
        self._request_id = value
        self.request[REQUEST_ID] = value

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def target(self) -> str:
        return self.request.raw_path

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self.request.headers

    @property
    def peer(self) -> str:
        return self.request.remote or ""

    @property
    def scheme(self) -> str:
        return self.request.scheme

    @property
    def host(self) -> str:
        return self.request.host

    @property
    def head_sent(self) -> bool:
        return self._switched or (self.response is not None and self.response.prepared)

    def declared_length(self) -> int | None:
        return self.request.content_length

    def body(self) -> AsyncIterable[bytes] | None:
        return self.request.content.iter_any() if self.request.body_exists else None

    async def send_continue(self) -> None:
        await send_continue(self.request)

    async def answer(self, response: web.StreamResponse) -> None:
        self.response = response
        if not response.prepared:
            request = self.request
            if request.body_exists and not request.content.is_eof():
                # Refused before its body was read (401, 413...): close rather than let
                # aiohttp read and discard an unauthenticated upload to keep the
                # connection alive.
                response.force_close()
            response.headers[X_REQUEST_ID] = self._request_id
            await response.prepare(request)
        await response.write_eof()

    async def relay(self, upstream: UpstreamResponse, extra: Mapping[str, str]) -> None:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in client_response_headers(upstream.headers):
            response.headers.add(name, value)
        response.headers.update(extra)
        response.headers[X_REQUEST_ID] = self._request_id
        self.response = response
        await response.prepare(self.request)
        async for chunk in upstream.body:
            await response.write(chunk)
        await response.write_eof()

    async def grant(self, identity: list[tuple[bytes, bytes]], extra: Mapping[str, str]) -> None:
        response = web.Response(status=200)
        for name, value in identity:
            response.headers[name.decode("ascii")] = value.decode("utf-8")
        response.headers.update(extra)
        await self.answer(response)  # closes rather than read a declared body

    def abort(self) -> None:
        if self.request.transport is not None:
            self.request.transport.abort()

    async def switch(self, head: bytes) -> ClientConnection:
        """Take the connection from aiohttp after a 101, as WebSocketResponse does, but
        whole: the tunnel relays bytes. aiohttp kept what the client sent after its
        handshake (its "message tail"); the tunnel tells aiohttp's protocol when the
        connection ends, and aiohttp's own answer to this request then finds it closed."""
        request = self.request
        transport, protocol = request.transport, request.protocol
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client closed the connection")
        self._switched = True
        transport.write(head)
        early: bytes = getattr(protocol, "_message_tail", b"")
        protocol._message_tail = b""
        self.response = web.Response(status=101)  # never sent: the connection is the tunnel's
        return ClientConnection(transport, protocol, early)

    async def run(self, handler: Handler) -> int:
        """An aiohttp handler of ours (admin API, health), its answer sent."""
        response = await handler(self.request)
        await self.answer(response)
        return response.status


def entry(lifecycle: RequestLifecycle) -> Middleware:
    """The one middleware: every request, proxied or ours, through the lifecycle.

    One layer: each aiohttp middleware costs a wrapper and a coroutine per request.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # aiohttp serves a connection's requests in one task: start from an empty context.
        structlog.contextvars.clear_contextvars()
        exchange = AioExchange(request)
        if is_verify(request.raw_path):
            status = await lifecycle.serve(exchange, lifecycle.verify)
        elif is_reserved(request.raw_path):
            status = await lifecycle.serve(exchange, lambda _: exchange.run(handler))
        else:
            status = await lifecycle.serve(exchange, lifecycle.proxy)
        # Nothing could be sent (the client left): aiohttp needs a response all the same.
        return exchange.response or web.Response(status=status)

    return middleware


async def not_ours(request: web.Request) -> web.StreamResponse:
    """A reserved path no route serves: 405 if another method would fit, else 404."""
    allowed = await _methods_for(request)
    if allowed:
        return json_error(
            405,
            "method_not_allowed",
            f"Use {', '.join(sorted(allowed))}.",
            {"Allow": ", ".join(sorted(allowed))},
        )
    return json_error(404, "not_found", NOT_FOUND_MESSAGE)


async def _methods_for(request: web.Request) -> set[str]:
    """Methods our own routes accept for this path (empty: the path is not ours)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.name == PROXY_ROUTE:
            continue
        match, methods = await resource.resolve(request)
        if match is None:
            allowed |= methods
    return allowed


def handler_args(cfg: Config) -> dict[str, float | bool]:
    """Limits of aiohttp's HTTP parser and connection handling, from config."""
    return {
        # 0: a body nobody read (a refused upload) is not drained to keep the connection
        # alive; the connection is closed instead.
        "lingering_time": 0,
        # Bodies are forwarded as sent (issue 13): aiohttp must not inflate a gzip or
        # deflate upload, which would go upstream under the client's Content-Length.
        "auto_decompress": False,
        "keepalive_timeout": cfg.server.idle_timeout,
        "max_line_size": cfg.server.max_url_bytes,
        "max_field_size": cfg.server.max_header_bytes,
        "max_headers": cfg.server.max_headers,
    }
