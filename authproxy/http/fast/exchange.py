"""The lean front end's side of the lifecycle: a parsed head in, answers straight out.

``FastFront.answer`` runs one request that connection.py parsed through the shared
RequestLifecycle; ``FastExchange`` writes the answers, framed byte for byte as aiohttp
frames them (response_head.py), to the socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping, Sequence
from typing import TYPE_CHECKING

from aiohttp.helpers import must_be_empty_body
from aiohttp.web import StreamResponse
from multidict import CIMultiDict

from authproxy.auth.verdict import Principal
from authproxy.http.exchange import CLIENT_CLOSED_REQUEST, UpstreamFieldsMemo
from authproxy.http.fast.connection import LATER, Job, Later
from authproxy.http.fast.response_head import framed, response_head
from authproxy.http.lifecycle import RequestLifecycle
from authproxy.http.tunnel import ClientConnection
from authproxy.upstream.transport import UpstreamResponse

if TYPE_CHECKING:
    from authproxy.http.fast.connection import FastConnection
    from authproxy.http.fast.head import FastRequest


class FastFront:
    """What a FastConnection calls for each request it parsed."""

    __slots__ = ("_lifecycle",)

    def __init__(self, lifecycle: RequestLifecycle) -> None:
        self._lifecycle = lifecycle

    async def answer(self, conn: FastConnection, request: FastRequest) -> bool:
        """Answer ``request`` on ``conn``; whether the connection may carry another one."""
        lifecycle = self._lifecycle
        exchange = FastExchange(conn, request)
        handle = lifecycle.verify if request.verify else lifecycle.proxy
        if await lifecycle.serve(exchange, handle) == CLIENT_CLOSED_REQUEST:
            return False
        return exchange.keep_alive

    def answer_now(self, conn: FastConnection, request: FastRequest) -> bool | Later | None:
        """Without a task, when nothing needs a wait: a forward-auth request answered at
        once (RequestLifecycle.verify_now; whether the connection may carry another;
        LATER: a 429 answered in the task), or a proxied one sent upstream
        (RequestLifecycle.proxy_now; LATER: its answer follows from callbacks). None:
        nothing was done; answer() serves it."""
        if not conn.can_write_now():
            return None
        exchange = FastExchange(conn, request)
        if not request.verify:
            return LATER if self._lifecycle.proxy_now(exchange) else None
        if not self._lifecycle.verify_now(exchange):
            return None
        # A yes is written; a refusal (429) is answered in the task, LATER.
        return exchange.keep_alive if exchange.head_sent else LATER


class FastExchange:
    """One request of a FastConnection as the lifecycle's Exchange."""

    __slots__ = (
        "_conn",
        "head_sent",
        "header_lines",
        "headers",
        "host",
        "keep_alive",
        "method",
        "original",
        "peer",
        "principal",
        "request_id",
        "scheme",
        "target",
        "upstream_memo",
    )

    def __init__(self, conn: FastConnection, request: FastRequest) -> None:
        self._conn = conn
        self.method = request.method
        self.target = request.target
        self.headers: CIMultiDict[str] = request.headers
        self.header_lines = request.header_lines
        self.host = request.headers["Host"]  # head.py takes only requests that have one
        self.peer = conn.peer
        self.scheme = conn.scheme
        self.keep_alive = request.keep_alive and not conn.closing
        self.upstream_memo: UpstreamFieldsMemo | None = conn.upstream_memo
        self.request_id = ""
        self.principal: Principal | None = None
        self.original: tuple[str, str] | None = None
        self.head_sent = False

    def declared_length(self) -> int | None:
        return None

    def body(self) -> AsyncIterable[bytes] | None:
        return None  # requests with a body are aiohttp's

    async def send_continue(self) -> None:
        return None

    async def answer(self, response: StreamResponse) -> None:
        """Send one of our own complete answers (errors, refusals)."""
        body = getattr(response, "body", None)
        body = body if isinstance(body, bytes) else b""
        headers = [
            (name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
            for name, value in response.headers.items()
        ]
        headers.append((b"Content-Length", b"%d" % len(body)))
        head, _ = response_head(
            self.method,
            response.status,
            response.reason,
            headers,
            {},
            self.request_id,
            self.keep_alive,
        )
        self.head_sent = True
        empty = must_be_empty_body(self.method, response.status)
        conn = self._conn
        conn.write(head if empty else head + body)
        if conn.must_drain():  # flow control, as after a relayed answer
            await conn.drain()

    async def relay(self, upstream: UpstreamResponse, extra: Mapping[str, str]) -> None:
        conn = self._conn
        whole = upstream.take_whole_body() if upstream.take_whole_body is not None else None
        if whole is not None:  # the common small answer: one write
            self.relay_now(upstream.status, upstream.reason, upstream.raw_headers, whole, extra)
        else:
            head, chunked = response_head(
                self.method,
                upstream.status,
                upstream.reason,
                upstream.raw_headers,
                extra,
                self.request_id,
                self.keep_alive,
            )
            self.head_sent = True
            conn.write(head)
            async for chunk in upstream.body:
                if chunk:
                    conn.write(framed(chunk, chunked, last=False))
                    await conn.drain()
            if chunked:
                conn.write(b"0\r\n\r\n")
        # Flow control, part of the answer (its time, and a 499 if the client leaves): the
        # next pipelined request waits until the client reads this answer, so a client
        # that never reads cannot make us buffer answers without limit. Checked inline:
        # most answers need no wait, and a coroutine per answer is measurable (issue 6).
        if conn.must_drain():
            await conn.drain()

    def relay_now(
        self,
        status: int,
        reason: str,
        raw_headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        extra: Mapping[str, str],
    ) -> None:
        """relay() for an upstream answer that arrived whole: one write, never awaited."""
        head, chunked = response_head(
            self.method, status, reason, raw_headers, extra, self.request_id, self.keep_alive
        )
        self.head_sent = True
        self._conn.write(head + framed(body, chunked, last=True))

    def writes_wait(self) -> bool:
        return self._conn.writes_wait()

    def must_drain(self) -> bool:
        return self._conn.must_drain()

    async def drain_written(self) -> None:
        if self._conn.must_drain():
            await self._conn.drain()

    def finish(self, keep_alive: bool) -> None:
        self._conn.finish(keep_alive and self.keep_alive)

    def resume(self, rest: Job) -> None:
        self._conn.resume(rest)

    async def grant(self, identity: list[tuple[bytes, bytes]], extra: Mapping[str, str]) -> None:
        self.grant_now(identity, extra)
        conn = self._conn
        if conn.must_drain():
            await conn.drain()

    def grant_now(self, identity: list[tuple[bytes, bytes]], extra: Mapping[str, str]) -> None:
        # A declared body (head.py let it through for verify only) is never read: the
        # connection closes after this answer (keep_alive is False for it).
        head, _ = response_head(
            self.method,
            200,
            "OK",
            [*identity, (b"Content-Length", b"0")],
            extra,
            self.request_id,
            self.keep_alive,
        )
        self.head_sent = True
        self._conn.write(head)

    def abort(self) -> None:
        self.keep_alive = False
        self._conn.abort()

    async def switch(self, head: bytes) -> ClientConnection:
        self.head_sent = True
        self.keep_alive = False
        conn = self._conn
        conn.write(head)
        return conn.hand_over_to_tunnel()
