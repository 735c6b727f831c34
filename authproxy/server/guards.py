"""The HTTP connection layer under the app: protocol errors as JSON, slow and surplus clients.

aiohttp's parser (llhttp) already refuses ambiguous framing (Content-Length with
Transfer-Encoding, repeated or invalid Content-Length, obs-fold, bare LF, NUL bytes) and
closes the connection, but answers everything with a plain-text 400. This layer:

* answers 414 for an over-long request target and 431 for over-long or too many header
  fields (RFC 9110 §15.5.15, RFC 6585 §5), 400 otherwise, all as our JSON error;
* closes a connection that has not sent a complete request head within
  ``server.header_timeout`` seconds (slowloris);
* refuses connections beyond ``server.max_connections`` by closing them at once.

It plugs in by giving aiohttp's Server a handler class of ours (``GuardedServer``), which
is why runner.py runs its own AppRunner instead of web.run_app. With ``server.fast_path``
each connection starts on http/fast/connection.py's lean protocol instead, which hands it to a
GuardedRequestHandler when a request needs aiohttp; the limits above cover both.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from authproxy.config.schema import ServerConfig
from authproxy.http.fast.connection import Answers, FastConnection

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Guard:
    header_timeout: float
    max_connections: int
    max_url_bytes: int
    max_header_bytes: int
    max_headers: int
    idle_timeout: float
    fast_path: bool

    @classmethod
    def from_config(cls, cfg: ServerConfig) -> Guard:
        return cls(
            header_timeout=cfg.header_timeout,
            max_connections=cfg.max_connections,
            max_url_bytes=cfg.max_url_bytes,
            max_header_bytes=cfg.max_header_bytes,
            max_headers=cfg.max_headers,
            idle_timeout=cfg.idle_timeout,
            fast_path=cfg.fast_path,
        )


def classify(exc: BaseException | None, max_url_bytes: int) -> tuple[int, str, str]:
    """(status, code, message) for a request the parser refused."""
    if isinstance(exc, LineTooLong):
        if len(exc.args) > 1 and str(exc.args[1]) == str(max_url_bytes):
            return 414, "uri_too_long", "The request target is too long."
        return 431, "header_fields_too_large", "A request header field is too long."
    if isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
        return 431, "header_fields_too_large", "The request has too many header fields."
    return 400, "bad_request", "The request is not valid HTTP/1.1."


class GuardedRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol with a head timeout and JSON protocol errors."""

    __slots__ = ("_guard", "_head_timer")

    def __init__(self, manager: GuardedServer, *, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if (
            isinstance(manager, GuardedServer)
            and manager.open_connections() >= self._guard.max_connections
        ):
            log.warning("connection_refused_over_limit", limit=self._guard.max_connections)
            transport.close()
            return
        super().connection_made(transport)
        self._head_timer = self._loop.call_later(self._guard.header_timeout, self._head_late)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None and self._request_count > 0:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _head_late(self) -> None:
        log.info("request_head_timeout", timeout=self._guard.header_timeout)
        self._head_timer = None
        self.force_close()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status != 400:
            return super().handle_error(request, status, exc, message)
        status, code, text = classify(exc, self._guard.max_url_bytes)
        log.info("bad_http_request", status=status, error=type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        body = json.dumps({"error": {"code": code, "message": text}})
        resp = web.Response(status=status, text=body, content_type="application/json")
        resp.force_close()
        return resp


class GuardedServer(web.Server):
    """aiohttp's Server, building a FastConnection or a GuardedRequestHandler per connection.

    Set up by GuardedAppRunner (the class of aiohttp's own Server object is swapped, so the
    attributes below are assigned there, not in __init__).
    """

    guard: Guard
    answers: Answers
    fast_connections: set[FastConnection]

    def __call__(self) -> FastConnection | RequestHandler:  # type: ignore[override]
        if self.guard.fast_path:
            return FastConnection(self)
        return self.aiohttp_handler()

    def aiohttp_handler(self) -> RequestHandler:
        return GuardedRequestHandler(self, guard=self.guard, loop=self._loop, **self._kwargs)

    def open_connections(self) -> int:
        return len(self.connections) + len(self.fast_connections)

    def pre_shutdown(self) -> None:
        """The listener is closed: close idle connections, the rest after their answer."""
        for conn in list(self.fast_connections):
            conn.close()
        super().pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Give answers in progress ``timeout`` seconds in all, then cut what is left."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # Answers in progress, with a task or not (LATER: under way in callbacks); idle
        # connections' tasks wait for a request that will not come, and end with them.
        busy = [c for c in self.fast_connections if c.busy]
        if busy:
            await asyncio.wait([c.until_idle() for c in busy], timeout=timeout)
            for conn in busy:  # late: stop talking to the upstream and the database too
                if conn.busy and conn.task is not None:
                    conn.task.cancel()
        for conn in list(self.fast_connections):
            conn.abort()
        left = None if deadline is None else max(0.0, deadline - loop.time())
        await super().shutdown(left)


class GuardedAppRunner(web.AppRunner):
    """aiohttp's AppRunner serving connections through GuardedServer; ``answers`` serves
    the lean front end's requests (used when ``guard.fast_path`` is on)."""

    def __init__(
        self, app: web.Application, *, guard: Guard, answers: Answers, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._guard = guard
        self._answers = answers

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same object, our subclass: GuardedServer adds only __call__ and one attribute.
        server.__class__ = GuardedServer
        server.guard = self._guard  # type: ignore[attr-defined]
        server.answers = self._answers  # type: ignore[attr-defined]
        server.fast_connections = set()  # type: ignore[attr-defined]
        return server
