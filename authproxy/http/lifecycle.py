"""One request's life, written once for both front ends.

    front end (http/aio/, http/fast/)   parses and frames; hands over an Exchange
      RequestLifecycle.serve            request id, log context, 499/500 catch-all, access line
        RequestLifecycle.proxy          admission, upstream exchange, relay; outcome metrics
      RequestLifecycle.proxy_now        the same without a task when nothing waits but the
                                        upstream (the lean front end's common case)
          LiveAnswers (live_answers.py) streams and WebSocket tunnels, ended with their key
        RequestLifecycle.verify         forward-auth: the same admission, answered 200 + who

A front end only says how to read the request and how to write answers (``Exchange``,
http/exchange.py):
aiohttp's server through web.Request/StreamResponse, the lean one straight to the socket.
Every decision (what is refused, how a failure is counted and answered, what the access
line says) is made here, so the two cannot disagree.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Final

import structlog
from multidict import CIMultiDict

from authproxy.auth.verdict import Principal
from authproxy.errors import BodyTooLarge, TooManyRequests
from authproxy.http.admission import Admission, refuse_target
from authproxy.http.at_once import ProxiedAtOnce, raising
from authproxy.http.errormap import error_response, json_error
from authproxy.http.exchange import (
    CLIENT_CLOSED_REQUEST,
    AtOnce,
    Exchange,
    GrantsAtOnce,
    Handle,
    RelaysAtOnce,
    encoded_upstream_fields,
    upstream_fields,
)
from authproxy.http.headers import (
    X_REQUEST_ID,
    identity_fields,
    original_request,
    request_id_from,
)
from authproxy.http.live_answers import LiveAnswers
from authproxy.observability.access_log import AccessLog
from authproxy.observability.logs import current_request
from authproxy.observability.metrics import Metrics
from authproxy.upstream.h1pool import H1Transport, Upgrade
from authproxy.upstream.transport import (
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamTransport,
    UpstreamUnavailable,
)

log = structlog.get_logger(__name__)

INTERNAL_ERROR_MESSAGE: Final = "Internal error; the request id identifies it in the logs."


class RequestLifecycle:
    """Both front ends' request sequence; built by the composition root (app.py)."""

    __slots__ = (
        "_access_log",
        "_admission",
        "_h1",
        "_live_answers",
        "_log_access",
        "_max_body_bytes",
        "_metrics",
        "_strip_prefixes",
        "_transport",
    )

    def __init__(
        self,
        *,
        admission: Admission,
        transport: UpstreamTransport,
        metrics: Metrics,
        strip_prefixes: tuple[str, ...],
        max_body_bytes: int,
        live_answers: LiveAnswers,
        log_access: bool = True,
        access_log: AccessLog | None = None,
    ) -> None:
        """``log_access``: one line per request; written by ``access_log`` when given
        (JSON, batched), else through structlog (the console format)."""
        self._log_access = log_access
        self._access_log = access_log
        self._admission = admission
        self._transport = transport
        # The h1 transport takes header fields already encoded (see UpstreamFieldsMemo).
        self._h1 = transport if isinstance(transport, H1Transport) else None
        self._metrics = metrics
        self._strip_prefixes = strip_prefixes
        self._max_body_bytes = max_body_bytes
        self._live_answers = live_answers  # streams and tunnels, ended with their key

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    async def serve(self, x: Exchange, handle: Handle, started: float | None = None) -> int:
        """Run ``handle`` in the request's context; the status answered (499: the client
        left first). Whatever fails, the client gets a JSON answer or a cut connection,
        the log an access line, and the daemon keeps serving. ``started``: the request
        began earlier (proxy_now) and has its request id already."""
        if started is None:
            started = time.perf_counter()
            x.request_id = request_id_from(x.headers.get(X_REQUEST_ID))
        # Every line logged from here names the request (observability/logs.py).
        logged_as = current_request.set(x)
        try:
            try:
                status = await handle(x)
            except ConnectionError:
                # The client went away mid-answer (a closed tab, a load test ending): not ours.
                log.info("client_disconnected")
                status = CLIENT_CLOSED_REQUEST
            except Exception as exc:  # noqa: BLE001 - the one catch-all; logged below
                status = await _answer_error(x, exc)
            except asyncio.CancelledError:
                # Stopped from outside: a server set to cancel handlers when their client
                # leaves, or a shutdown past its grace period. No answer will be sent.
                self.access_line(CLIENT_CLOSED_REQUEST, started, x)
                raise
            self.access_line(status, started, x)
            return status
        finally:
            # aiohttp serves a connection's requests in one task: the next starts afresh.
            current_request.reset(logged_as)

    def access_line(self, status: int, started: float, x: Exchange) -> None:
        if not self._log_access:
            return
        duration = time.perf_counter() - started
        writer = self._access_log
        if writer is None:  # the console format: fields from the request's log context
            logged_as = current_request.set(x)  # unset on the paths without a task
            try:
                self._log_access_line(status, duration, x)
            finally:
                current_request.reset(logged_as)
            return
        who = x.principal
        writer.write(
            status,
            duration,
            x.peer,
            x.request_id,
            x.method,
            x.target.split("?", 1)[0],
            None if who is None else who.space_id,
            None if who is None else who.key_id,
            x.original,
        )

    @staticmethod
    def _log_access_line(status: int, duration: float, x: Exchange) -> None:
        original = (
            {}
            if x.original is None
            else {"original_method": x.original[0], "original_uri": x.original[1]}
        )
        log.info(
            "request",
            status=status,
            duration_ms=round(duration * 1000, 3),
            remote=x.peer,
            **original,
        )

    async def proxy(self, x: Exchange) -> int:
        """Admit the request and forward it; the status sent. Refusals raise what
        errormap answers. Counted once per request as (outcome, status)."""
        refusal = refuse_target(x.target)
        if refusal is not None:
            await x.answer(refusal)
            return refusal.status
        admission = self._admission
        principal = admission.authenticate(x.peer, x.headers)  # refusals counted there
        if not isinstance(principal, Principal):
            principal = await principal
        x.principal = principal
        try:
            rate_headers = admission.take_rate(principal)
            body = self._capped_body(x)
        except TooManyRequests:
            self._metrics.count_request("rate_limited", "429")
            raise
        except BodyTooLarge:
            self._metrics.count_request("allowed", "413")
            raise
        upgrade = None if body is not None else self._live_answers.upgrade(x, principal)
        exchange = upgrade or self._upstream_request(x, principal, body)
        return await self.forward(x, principal, rate_headers, exchange, upgrade, body)

    async def forward(
        self,
        x: Exchange,
        principal: Principal,
        rate_headers: Mapping[str, str],
        exchange: AbstractAsyncContextManager[UpstreamResponse],
        upgrade: Upgrade | None = None,
        body: _CappedBody | None = None,
        sent: float | None = None,
    ) -> int:
        """An admitted request to the upstream through ``exchange`` and its answer to the
        client; the status sent. Counted once per request as (allowed, status). ``sent``:
        when proxy_now wrote the request (``exchange`` adopted it; http/at_once.py)."""
        status = 502
        try:
            if body is not None:
                await x.send_continue()  # authorised: now the client may send its body
            live = self._live_answers
            sent = time.perf_counter() if sent is None else sent
            try:
                async with exchange as up:
                    self._metrics.upstream_seconds.observe(time.perf_counter() - sent)
                    status = up.status  # what the client is told, even if it leaves
                    if upgrade is not None and upgrade.tunnel is not None:
                        await live.tunnel(x, principal, up, upgrade, rate_headers)
                    else:
                        await live.relay(x, principal, up, rate_headers)
            except (UpstreamTimeout, UpstreamUnavailable) as exc:
                if body is not None and body.exceeded and not x.head_sent:
                    raise BodyTooLarge() from None
                self._admission.note_upstream_failure(exc, mid_stream=x.head_sent)
                if not x.head_sent:
                    status = 504 if isinstance(exc, UpstreamTimeout) else 502
                    raise
                x.abort()
            return status
        except BodyTooLarge:
            status = 413
            raise
        finally:
            self._metrics.count_request("allowed", str(status))

    def proxy_now(self, x: RelaysAtOnce) -> bool:
        """proxy() without a task for the request that waits for nothing but the
        upstream: a key the cache holds as verified, within its rate, a free pooled
        upstream connection, no WebSocket upgrade. The request is written at the end of
        the loop's turn; its answer is relayed from the callback of its head
        (http/at_once.py). False: nothing was
        done (serve(x, proxy) answers, refusals included). Most proxied requests are
        these, and a task per request was a tenth of their time (issue 15)."""
        h1, memo = self._h1, x.upstream_memo
        if h1 is None or memo is None or "Upgrade" in x.headers:
            return False
        if refuse_target(x.target) is not None:
            return False
        started = time.perf_counter()
        # The upstream connection first: once the key is looked up (and counted), the
        # request must not start over in proxy(), which would look it up again.
        conn = h1.take_now()
        if conn is None:
            return False
        admission = self._admission
        principal = admission.cached(x.headers)
        if principal is None:
            h1.put_back(conn)
            return False
        x.request_id = request_id_from(x.headers.get(X_REQUEST_ID))
        x.principal = principal
        try:
            fields = encoded_upstream_fields(x, principal, admission, self._strip_prefixes, memo)
            rate_headers = admission.take_rate(principal)
        except Exception as exc:  # noqa: BLE001 - answered by serve(), as proxy() would be
            h1.put_back(conn)
            if isinstance(exc, TooManyRequests):
                self._metrics.count_request("rate_limited", "429")
            x.resume(self.answered_in_task(x, raising(exc), started))
            return True
        at_once = ProxiedAtOnce(self, h1, x, principal, conn, fields, rate_headers, started)
        h1.send_soon(conn, x.method, x.target, fields, at_once.on_head)
        return True

    async def verify(self, x: Exchange) -> int:
        """Forward-auth: an nginx, Traefik or Envoy in front asks whether to admit a
        request. ``Authorization`` is judged exactly as proxy() judges it (the same
        admission: parser, cache, argon2 bound, abuse and key limits, metrics, last use),
        and a yes is 200 with the identity headers; a refusal raises what errormap
        answers (401/429/503). The body is never read; the upstream never contacted."""
        x.original = original_request(x.method, x.target, x.headers)
        admission = self._admission
        principal = admission.authenticate(x.peer, x.headers)  # refusals counted there
        if not isinstance(principal, Principal):
            principal = await principal
        x.principal = principal
        outcome, status = "allowed", 200
        try:
            await x.grant(identity_fields(principal), admission.take_rate(principal))
            return status
        except TooManyRequests:
            outcome, status = "rate_limited", 429
            raise
        finally:
            self._metrics.count_request(outcome, str(status))

    def verify_now(self, x: GrantsAtOnce) -> bool:
        """verify() without a coroutine for the request that needs no wait: a key the
        cache holds as verified. Within its rate, the yes is written, counted and logged
        as verify() and serve() would; past it, the 429 is counted here and answered by
        serve() in the connection's task (x.head_sent then still False), so the key is
        looked up and counted once. False when nothing was done (serve(x, verify) then
        answers, refusals included). Forward-auth asks once per request the gateway
        serves, and this path is most of them (issue 17)."""
        started = time.perf_counter()
        admission = self._admission
        principal = admission.cached(x.headers)
        if principal is None:
            return False
        x.request_id = request_id_from(x.headers.get(X_REQUEST_ID))
        x.original = original_request(x.method, x.target, x.headers)
        x.principal = principal
        try:
            rate_headers = admission.take_rate(principal)
        except TooManyRequests as exc:
            self._metrics.count_request("rate_limited", "429")
            x.resume(self.answered_in_task(x, raising(exc), started))
            return True
        x.grant_now(identity_fields(principal), rate_headers)
        self._metrics.count_request("allowed", "200")
        self.access_line(200, started, x)
        return True

    async def answered_in_task(self, x: AtOnce, handle: Handle, started: float) -> bool:
        """The rest of a request proxy_now or verify_now began, through serve() (log
        context, errors, the access line); whether the connection may carry another."""
        status = await self.serve(x, handle, started)
        return status != CLIENT_CLOSED_REQUEST and x.keep_alive

    def close_tunnels(self) -> None:
        """Shutdown, after the drain: every tunnel gets a close frame 1001."""
        self._live_answers.close_tunnels()

    def _capped_body(self, x: Exchange) -> _CappedBody | None:
        limit = self._max_body_bytes
        length = x.declared_length()
        if length is not None and length > limit:
            raise BodyTooLarge()
        body = x.body()
        return None if body is None else _CappedBody(body, limit)

    def _upstream_request(
        self, x: Exchange, principal: Principal, body: AsyncIterable[bytes] | None
    ) -> AbstractAsyncContextManager[UpstreamResponse]:
        h1, memo = self._h1, x.upstream_memo
        if h1 is not None and body is None and memo is not None:
            return h1.request_encoded(
                x.method,
                x.target,
                encoded_upstream_fields(x, principal, self._admission, self._strip_prefixes, memo),
            )
        fields = upstream_fields(x, principal, self._admission, self._strip_prefixes)
        return self._transport.request(x.method, x.target, CIMultiDict(fields), body)


async def _answer_error(x: Exchange, exc: Exception) -> int:
    """Answer an error as JSON (500 for the unexpected); once a head is out, cut instead."""
    response = error_response(exc)
    if response is None:
        log.error("unhandled_error", exc_info=True)
        response = json_error(500, "internal_error", INTERNAL_ERROR_MESSAGE)
    if x.head_sent:  # a second head inside a body would corrupt the stream
        x.abort()
        return response.status
    try:
        await x.answer(response)
    except ConnectionError:
        return CLIENT_CLOSED_REQUEST
    return response.status


class _CappedBody:
    """The request body, streamed, refusing to pass more than ``limit`` bytes."""

    __slots__ = ("_body", "_limit", "exceeded")

    def __init__(self, body: AsyncIterable[bytes], limit: int) -> None:
        self._body = body
        self._limit = limit
        self.exceeded = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        async for chunk in self._body:
            sent += len(chunk)
            if sent > self._limit:
                self.exceeded = True
                raise BodyTooLarge()
            yield chunk
