"""A proxied request without a task: what RequestLifecycle.proxy_now started, finished.

proxy_now (http/lifecycle.py) admits a cached key's request and writes it upstream on a
free pooled connection. From there, ``ProxiedAtOnce`` takes over in callbacks: when the
answer's head is in and the whole answer with it (most small answers arrive in one read)
and the client reads, it is relayed, counted and logged right there. Anything else (a
failure, to be retried or answered 502/504; an answer that streams, which a revoke must be
able to cut; a client not reading) goes to the connection's task as the rest of proxy()
(RequestLifecycle.forward through serve()), so each decision is still made in one place.

Why: a task per request, its coroutine chain and its wake-ups were about a fifth of a
proxied request's CPU (issue 15; README, "Benchmarks").
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import structlog

from authproxy.auth.verdict import Principal
from authproxy.http.exchange import (
    CLIENT_CLOSED_REQUEST,
    AtOnce,
    Exchange,
    Handle,
    RelaysAtOnce,
)
from authproxy.observability.logs import current_request
from authproxy.observability.metrics import Metrics
from authproxy.upstream.h1connection import Connection
from authproxy.upstream.h1pool import H1Transport
from authproxy.upstream.transport import UpstreamResponse

log = structlog.get_logger(__name__)


class Lifecycle(Protocol):
    """What of RequestLifecycle (http/lifecycle.py) finishes a request begun at once."""

    @property
    def metrics(self) -> Metrics: ...

    def access_line(self, status: int, started: float, x: Exchange) -> None: ...

    async def forward(
        self,
        x: Exchange,
        principal: Principal,
        rate_headers: Mapping[str, str],
        exchange: AbstractAsyncContextManager[UpstreamResponse],
        *,
        sent: float | None = None,
    ) -> int: ...

    async def answered_in_task(self, x: AtOnce, handle: Handle, started: float) -> bool: ...


class ProxiedAtOnce:
    """A request proxy_now wrote upstream. When its head arrives (a future's callback):
    the answer relayed at once if it arrived whole and the client reads (most small
    answers come in one read), else the rest of proxy() in the connection's task. Either
    way it is counted, logged and ended as proxy() and serve() would."""

    __slots__ = (
        "_conn",
        "_fields",
        "_h1",
        "_lifecycle",
        "_principal",
        "_rate",
        "_sent",
        "_started",
        "_status",
        "_x",
    )

    def __init__(
        self,
        lifecycle: Lifecycle,
        h1: H1Transport,
        x: RelaysAtOnce,
        principal: Principal,
        conn: Connection,
        fields: bytes,
        rate_headers: Mapping[str, str],
        started: float,
    ) -> None:
        self._lifecycle = lifecycle
        self._h1 = h1
        self._x = x
        self._principal = principal
        self._conn = conn
        self._fields = fields
        self._rate = rate_headers
        self._started = started
        self._sent = time.perf_counter()
        self._status = 0  # the upstream's, once relayed (the connection may serve another)

    def on_head(self, _: object) -> None:
        x, conn, lifecycle = self._x, self._conn, self._lifecycle
        if not conn.arrived() or x.writes_wait():
            # A failure (the retry of a dead pooled connection, 502, 504), an answer that
            # streams (a revoke must be able to cut it) or a client not reading. A client
            # gone is settled below (499), with no task: it may be a shutdown's cut.
            self._resume(self._rest)
            return
        metrics = lifecycle.metrics
        metrics.upstream_seconds.observe(time.perf_counter() - self._sent)
        status = self._status = conn.status
        try:
            body = conn.take_complete_body() or b""
            x.relay_now(status, conn.reason, conn.headers, body, self._rate)
        except ConnectionError:
            status = CLIENT_CLOSED_REQUEST
            logged_as = current_request.set(x)
            log.info("client_disconnected")  # as serve() logs it
            current_request.reset(logged_as)
        except Exception as exc:  # noqa: BLE001 - serve() answers it (500) and logs it
            self._resume(raising(exc))
            return
        finally:
            self._h1.release_now(conn)
            metrics.count_request("allowed", str(self._status))
        if status != CLIENT_CLOSED_REQUEST and x.must_drain():
            self._resume(self._drain)  # flow control, part of the answer as in relay()
            return
        lifecycle.access_line(status, self._started, x)
        x.finish(status != CLIENT_CLOSED_REQUEST)

    def _resume(self, handle: Handle) -> None:
        """The rest through serve() (log context, errors, the access line) in the task."""
        x = self._x
        x.resume(self._lifecycle.answered_in_task(x, handle, self._started))

    async def _rest(self, x: Exchange) -> int:
        adopted = self._h1.adopt(x.method, x.target, self._fields, self._conn)
        return await self._lifecycle.forward(
            x, self._principal, self._rate, adopted, sent=self._sent
        )

    async def _drain(self, _: Exchange) -> int:
        await self._x.drain_written()
        return self._status


def raising(exc: Exception) -> Handle:
    """A handle that raises ``exc``, for serve() to answer as it answers any error."""

    async def handle(_: Exchange) -> int:
        raise exc

    return handle
