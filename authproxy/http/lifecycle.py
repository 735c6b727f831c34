"""One request's life, written once for both front ends.

    front end (http/aio/, http/fast/)   parses and frames; hands over an Exchange
      RequestLifecycle.serve            request id, log context, 499/500 catch-all, access line
        RequestLifecycle.proxy          admission, upstream exchange, relay; outcome metrics
        RequestLifecycle.verify         forward-auth: the same admission, answered 200 + who

A front end only says how to read the request and how to write answers (``Exchange``):
aiohttp's server through web.Request/StreamResponse, the lean one straight to the socket.
Every decision (what is refused, how a failure is counted and answered, what the access
line says) is made here, so the two cannot disagree.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Final, Protocol

import structlog
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from authproxy.auth.live import LiveConnections
from authproxy.auth.verdict import Principal
from authproxy.errors import BodyTooLarge, TooManyRequests
from authproxy.http.admission import Admission, refuse_target
from authproxy.http.errormap import error_response, json_error
from authproxy.http.headers import (
    REQUEST_ID_FROM_END,
    X_REQUEST_ID,
    identity_fields,
    original_request,
    request_id_from,
    upstream_request_fields,
)
from authproxy.http.tunnel import ClientConnection, Tunnel
from authproxy.http.websocket import (
    GOING_AWAY,
    POLICY_VIOLATION,
    UPGRADE_FIELDS,
    is_websocket_upgrade,
    switching_head,
)
from authproxy.observability.access_log import AccessLog
from authproxy.observability.metrics import Metrics
from authproxy.upstream.h1pool import H1Transport, Upgrade, encode_fields
from authproxy.upstream.transport import (
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamTransport,
    UpstreamUnavailable,
)

log = structlog.get_logger(__name__)

# The close frame's reason when a key's open connection is ended (never the key).
_ENDED: Final = {"revoked": "API key revoked", "expired": "API key expired"}
SHUTDOWN_REASON: Final = "server shutting down"
# nginx's "client closed request": logged and counted, never sent.
CLIENT_CLOSED_REQUEST: Final = 499
INTERNAL_ERROR_MESSAGE: Final = "Internal error; the request id identifies it in the logs."


class UpstreamFieldsMemo:
    """A connection's last upstream header block, encoded around its X-Request-Id.

    A keep-alive client repeats the same header fields (the fast front end hands over the
    same object for a repeated block) and the same key; the fields the upstream receives
    then differ only in the request id, which is put back in its place.
    """

    __slots__ = ("after", "before", "headers", "principal")

    def __init__(self) -> None:
        self.headers: object = None
        self.principal: Principal | None = None
        self.before = self.after = b""


class Exchange(Protocol):
    """One request as a front end hands it to the lifecycle, and the ways to answer it."""

    request_id: str  # set by RequestLifecycle.serve
    principal: Principal | None  # set by RequestLifecycle.proxy once the key is accepted
    # Forward-auth: the method and URI (no query) of the request a gateway asks about.
    original: tuple[str, str] | None

    @property
    def method(self) -> str: ...
    @property
    def target(self) -> str:
        """The request target as sent (origin-form: path and query, undecoded)."""

    @property
    def headers(self) -> MultiMapping[str]: ...
    @property
    def peer(self) -> str: ...
    @property
    def scheme(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def upstream_memo(self) -> UpstreamFieldsMemo | None:
        """Per-connection memo of encoded upstream fields, where the front end keeps one."""

    @property
    def head_sent(self) -> bool:
        """An answer's head is out: an error can no longer be answered, only cut."""

    def declared_length(self) -> int | None: ...
    def body(self) -> AsyncIterable[bytes] | None:
        """The request body as it arrives, or None for a request without one."""

    async def send_continue(self) -> None:
        """Tell a client waiting on ``Expect: 100-continue`` to send its body."""

    async def answer(self, response: web.StreamResponse) -> None:
        """Send one of our own answers (an error, a refusal, an admin API response)."""

    async def relay(self, upstream: UpstreamResponse, extra: Mapping[str, str]) -> None:
        """Send the upstream's answer (its head filtered, plus ``extra``) and its body."""

    async def grant(self, identity: list[tuple[bytes, bytes]], extra: Mapping[str, str]) -> None:
        """Forward-auth's yes: 200, an empty body, ``identity`` and ``extra`` as headers.
        A request that declared a body is answered without reading it, and its
        connection closed."""

    def abort(self) -> None:
        """Cut the client connection: the only honest end of a truncated answer."""

    async def switch(self, head: bytes) -> ClientConnection:
        """Send the 101 ``head`` and hand the client connection over (to a Tunnel)."""


Handle = Callable[[Exchange], Awaitable[int]]


class RequestLifecycle:
    """Both front ends' request sequence; built by the composition root (app.py)."""

    __slots__ = (
        "_access_log",
        "_admission",
        "_h1",
        "_live",
        "_log_access",
        "_max_body_bytes",
        "_metrics",
        "_strip_prefixes",
        "_transport",
        "_tunnel_idle_timeout",
        "_upgrades",
        "tunnels",
    )

    def __init__(
        self,
        *,
        admission: Admission,
        transport: UpstreamTransport,
        metrics: Metrics,
        strip_prefixes: tuple[str, ...],
        max_body_bytes: int,
        upgrades: H1Transport,
        live: LiveConnections,
        tunnel_idle_timeout: float = 3600.0,
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
        self._upgrades = upgrades  # WebSocket handshakes: a dedicated connection each
        self._live = live
        self._tunnel_idle_timeout = tunnel_idle_timeout
        self.tunnels: set[Tunnel] = set()

    async def serve(self, x: Exchange, handle: Handle) -> int:
        """Run ``handle`` in the request's context; the status answered (499: the client
        left first). Whatever fails, the client gets a JSON answer or a cut connection,
        the log an access line, and the daemon keeps serving."""
        started = time.perf_counter()
        x.request_id = request_id = request_id_from(x.headers.get(X_REQUEST_ID))
        # The path only: a query string may carry anything, keys included.
        structlog.contextvars.bind_contextvars(
            request_id=request_id, method=x.method, path=x.target.split("?", 1)[0]
        )
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
            self._access_line(CLIENT_CLOSED_REQUEST, started, x)
            raise
        self._access_line(status, started, x)
        return status

    def _access_line(self, status: int, started: float, x: Exchange) -> None:
        if not self._log_access:
            return
        duration = time.perf_counter() - started
        writer = self._access_log
        if writer is None:
            log.info("request", status=status, duration_ms=round(duration * 1000, 3), remote=x.peer)
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
        structlog.contextvars.bind_contextvars(space_id=principal.space_id, key_id=principal.key_id)
        outcome, status = "allowed", 502
        try:
            rate_headers = admission.take_rate(principal)
            body = self._capped_body(x)
            if body is not None:
                await x.send_continue()  # authorised: now the client may send its body
            upgrade = None
            if (
                body is None
                and "Upgrade" in x.headers
                and is_websocket_upgrade(x.method, x.headers)
            ):
                upgrade = self._upgrades.upgrade(x.target, self._upgrade_fields(x, principal))
            sent = time.perf_counter()
            try:
                async with upgrade or self._upstream_request(x, principal, body) as up:
                    self._metrics.upstream_seconds.observe(time.perf_counter() - sent)
                    status = up.status  # what the client is told, even if it leaves
                    if upgrade is not None and upgrade.tunnel is not None:
                        await self._tunnel(x, principal, up, upgrade, rate_headers)
                    else:
                        await self._relay(x, principal, up, rate_headers)
            except (UpstreamTimeout, UpstreamUnavailable) as exc:
                if body is not None and body.exceeded and not x.head_sent:
                    raise BodyTooLarge() from None
                admission.note_upstream_failure(exc, mid_stream=x.head_sent)
                if not x.head_sent:
                    status = 504 if isinstance(exc, UpstreamTimeout) else 502
                    raise
                x.abort()
            return status
        except TooManyRequests:
            outcome, status = "rate_limited", 429
            raise
        except BodyTooLarge:
            status = 413
            raise
        finally:
            self._metrics.count_request(outcome, str(status))

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
        structlog.contextvars.bind_contextvars(space_id=principal.space_id, key_id=principal.key_id)
        outcome, status = "allowed", 200
        try:
            await x.grant(identity_fields(principal), admission.take_rate(principal))
            return status
        except TooManyRequests:
            outcome, status = "rate_limited", 429
            raise
        finally:
            self._metrics.count_request(outcome, str(status))

    async def _relay(
        self, x: Exchange, principal: Principal, up: UpstreamResponse, extra: Mapping[str, str]
    ) -> None:
        """Relay the answer; while it streams, a revoke or expiry of its key cuts it."""
        task = asyncio.current_task()
        live = self._live.track(
            principal.key_id, principal.expires_at, "stream", lambda _: _cut(x, task)
        )
        try:
            await x.relay(up, extra)
        except asyncio.CancelledError:
            # Cut for its key (_cut): the client connection is gone; the answer ends here.
            if not live.ended or task is None or task.uncancel() > 0:
                raise
        finally:
            self._live.untrack(live)

    async def _tunnel(
        self,
        x: Exchange,
        principal: Principal,
        up: UpstreamResponse,
        upgrade: Upgrade,
        extra: Mapping[str, str],
    ) -> None:
        """The upstream said 101: its head to the client, then a byte tunnel until either
        side closes (the access line is written then: status 101, the tunnel's lifetime)."""
        upstream = upgrade.tunnel
        if upstream is None:
            return
        try:
            client = await x.switch(switching_head(up.reason, up.raw_headers, extra, x.request_id))
        except BaseException:
            upstream.transport.close()
            raise
        tunnel = Tunnel(
            client=client.transport,
            before=client.protocol,
            upstream=upstream.transport,
            idle_timeout=self._tunnel_idle_timeout,
            metrics=self._metrics,
        )
        live = self._live.track(
            principal.key_id,
            principal.expires_at,
            "websocket",
            lambda why: tunnel.close(POLICY_VIOLATION, _ENDED.get(why, why), why=why),
        )
        self.tunnels.add(tunnel)
        try:
            tunnel.start(client.early, upstream.early)
            await asyncio.shield(tunnel.closed)
        except asyncio.CancelledError:
            tunnel.abort()  # a shutdown past its grace period
            raise
        finally:
            self.tunnels.discard(tunnel)
            self._live.untrack(live)
        log.info("tunnel_closed", reason=tunnel.reason)

    def close_tunnels(self) -> None:
        """Shutdown, after the drain: every tunnel gets a close frame 1001."""
        for tunnel in list(self.tunnels):
            tunnel.close(GOING_AWAY, SHUTDOWN_REASON, why="shutdown")

    def _upgrade_fields(self, x: Exchange, principal: Principal) -> bytes:
        """The WebSocket handshake's fields for the upstream: the usual rules (hop-by-hop,
        Authorization and client copies of ours dropped, identity added), and the one
        upgrade we forward (RFC 9110 §7.8)."""
        headers = x.headers
        who = self._admission.identity(
            principal,
            peer=x.peer,
            headers=headers,
            scheme=x.scheme,
            host=x.host,
            request_id=x.request_id,
        )
        fields = upstream_request_fields(
            headers.items(), who, headers.getall("Connection", []), self._strip_prefixes
        )
        return encode_fields([*UPGRADE_FIELDS, *fields])

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
        headers, h1, memo = x.headers, self._h1, x.upstream_memo
        if (
            h1 is not None
            and body is None
            and memo is not None
            and memo.headers is headers
            and memo.principal == principal
        ):  # a cache hit makes a new, equal Principal
            return h1.request_encoded(
                x.method,
                x.target,
                b"%sX-Request-Id: %s\r\n%s"
                % (memo.before, x.request_id.encode("ascii"), memo.after),
            )
        who = self._admission.identity(
            principal,
            peer=x.peer,
            headers=headers,
            scheme=x.scheme,
            host=x.host,
            request_id=x.request_id,
        )
        fields = upstream_request_fields(
            headers.items(), who, headers.getall("Connection", []), self._strip_prefixes
        )
        if h1 is None or body is not None:
            return self._transport.request(x.method, x.target, CIMultiDict(fields), body)
        at = len(fields) + REQUEST_ID_FROM_END
        before, after = encode_fields(fields[:at]), encode_fields(fields[at + 1 :])
        if memo is not None:
            memo.headers, memo.principal, memo.before, memo.after = (
                headers,
                principal,
                before,
                after,
            )
        return h1.request_encoded(
            x.method,
            x.target,
            b"%sX-Request-Id: %s\r\n%s" % (before, x.request_id.encode("ascii"), after),
        )


def _cut(x: Exchange, task: asyncio.Task[object] | None) -> None:
    """End a streaming answer whose key was revoked or expired: the client connection is
    cut, and the task relaying it stops waiting for the upstream."""
    x.abort()
    if task is not None:
        task.cancel()


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
