"""A lean HTTP/1.1 upstream transport: asyncio protocols, llhttp via httptools, keep-alive pool.

Why not aiohttp's ClientSession: the proxy's hot path is one request out and one response
back per client request, and ClientSession's generality (cookies, redirects, URL
normalisation, auto headers, tracing) costs most of the time per request (issue 6 measured
ClientSession at a third of a protocol-level client). This one does only what a proxy hop
needs: write the raw request target as given (no URL library in between), stream bodies
both ways with flow control, reuse connections, and time out stalls.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable
from types import TracebackType
from typing import NamedTuple

from multidict import CIMultiDict
from yarl import URL

from authproxy.config.schema import UpstreamConfig
from authproxy.tls.contexts import client_context
from authproxy.upstream.h1connection import Connection
from authproxy.upstream.transport import (
    FramedBody,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
    certificate_rejected,
    declared_length,
)

_IDLE_SECONDS = 30.0  # below typical upstream keep-alive timeouts (nginx: 75 s)
# Safe to send again when a reused connection turns out dead before any response byte.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Header fields to send: as a multidict, or already encoded by encode_fields.
Fields = CIMultiDict[str] | bytes


def encode_fields(fields: Iterable[tuple[str, str]]) -> bytes:
    """``Name: value`` lines. Encoded once, as UTF-8 keeping stray bytes of values: names
    are tokens (ASCII), so this frames them as a per-field encoding would."""
    return "".join([f"{name}: {value}\r\n" for name, value in fields]).encode(
        "utf-8", "surrogateescape"
    )


class H1Transport:
    """UpstreamTransport over pooled raw HTTP/1.1 connections (see the module docstring)."""

    def __init__(self, cfg: UpstreamConfig, *, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: the context for an https url (tls/contexts.py's client_context, made
        here when not given)."""
        url = URL(cfg.url)
        self._host = url.host or ""
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = (tls or client_context(cfg)[0]) if url.scheme == "https" else None
        # The name the certificate must carry, sent as SNI: the url's host unless set.
        self._server_name = (cfg.server_name or self._host) if self._ssl else None
        self._base_path = url.raw_path.rstrip("/")
        host_header = url.raw_host or ""
        if url.port is not None and not url.is_default_port():
            host_header += f":{url.port}"
        self._host_header = host_header
        self._cfg = cfg
        self._idle: deque[Connection] = deque()
        self._slots = Slots(cfg.max_connections)

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    self._new_connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_name,
                ),
                self._cfg.connect_timeout,
            )
        except TimeoutError:
            raise UpstreamTimeout(
                f"connect timed out after {self._cfg.connect_timeout} s"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise certificate_rejected(self._server_name or self._host, exc) from exc
        except OSError as exc:
            raise UpstreamUnavailable(f"connect failed: {exc}") from exc
        return conn

    def _new_connection(self) -> Connection:
        return Connection(
            asyncio.get_running_loop(),
            max_head_bytes=self._cfg.max_header_bytes,
            max_fields=self._cfg.max_headers,
        )

    def _take_idle(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.idle_seconds() < _IDLE_SECONDS:
                return conn
            conn.close()
        return None

    def _head(self, method: str, target: str, headers: Fields, chunked: bool) -> bytes:
        line = (
            f"{method} {self._base_path}{target} HTTP/1.1\r\nHost: {self._host_header}\r\n"
        ).encode("utf-8", "surrogateescape")
        fields = headers if isinstance(headers, bytes) else encode_fields(headers.items())
        return line + fields + (b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\n")

    def request(
        self, method: str, target: str, headers: CIMultiDict[str], body: AsyncIterable[bytes] | None
    ) -> _Exchange:
        return _Exchange(self, method, target, headers, body)

    def request_encoded(self, method: str, target: str, fields: bytes) -> _Exchange:
        """``request`` for a request without a body, its header fields already encoded
        (``encode_fields``): the fast front end keeps them per connection."""
        return _Exchange(self, method, target, fields, None)

    def take_now(self) -> Connection | None:
        """A pool slot and an idle connection, both free now, for ``send_soon``; None (and
        nothing taken) when either would need a wait. Give them back with ``put_back``
        unused, ``release_now`` after the answer, or ``adopt`` for an answer that needs
        one."""
        if not self._slots.try_take():
            return None
        conn = self._take_idle()
        if conn is None:
            self._slots.release()
        return conn

    def put_back(self, conn: Connection) -> None:
        """A connection from take_now, unused: idle again, its slot free."""
        self._idle.append(conn)
        self._slots.release()

    def send_soon(
        self,
        conn: Connection,
        method: str,
        target: str,
        fields: bytes,
        on_head: Callable[[asyncio.Future[None]], None],
    ) -> None:
        """Write a request without a body on a connection from take_now at the end of
        this turn of the event loop; ``on_head`` is called once its head is in (or failed:
        ``conn.head``). Not at once: the requests read in one turn then reach the upstream
        together and wake it once, not once each; written one by one, the bench's
        every-head-new row cost 10% more CPU per request (kernel wake-ups, perf)."""
        conn.loop.call_soon(self._send_now, conn, method, target, fields, on_head)

    def _send_now(
        self,
        conn: Connection,
        method: str,
        target: str,
        fields: bytes,
        on_head: Callable[[asyncio.Future[None]], None],
    ) -> None:
        try:
            self._send(conn, method, target, fields, None)
        except Exception as exc:  # noqa: BLE001 - handed to on_head, never to the loop
            # Closed while idle: on_head's caller retries as for any request (anything
            # else fails there again, and is answered as the error it is).
            conn.fail(
                exc if isinstance(exc, UpstreamUnavailable) else UpstreamUnavailable(str(exc))
            )
        finally:
            conn.head.add_done_callback(on_head)

    def release_now(self, conn: Connection) -> None:
        """After the whole answer to send_soon's request was taken: the connection back
        to the pool (under the one rule) and its slot free; ``async with`` ends so too."""
        conn.unwatch_head()
        try:
            self._release(conn)
        finally:
            self._slots.release()

    def adopt(self, method: str, target: str, fields: bytes, conn: Connection) -> _Exchange:
        """``request_encoded`` for the request send_soon wrote on ``conn``: ``async with``
        waits for its head (a dead reused connection retried as for any request) and
        releases the slot take_now took."""
        return _Exchange(self, method, target, fields, None, sent=conn)

    def upgrade(self, target: str, fields: bytes) -> Upgrade:
        """Send a WebSocket opening handshake (GET) on a connection of its own, never
        pooled; ``async with`` it for the upstream's answer (Upgrade.tunnel on a 101)."""
        return Upgrade(self, target, fields)

    async def _send_with_retry(
        self,
        method: str,
        target: str,
        headers: Fields,
        body: AsyncIterable[bytes] | None,
        sent: Connection | None = None,
    ) -> Connection:
        """Send the request (the body in the background) and wait for the response head;
        ``sent``: a pooled connection the request was already written on (send_soon)."""
        conn = sent or self._take_idle()
        reused = conn is not None
        if conn is None:
            conn = await self._connect()
        while True:
            try:
                if sent is None:
                    self._send(conn, method, target, headers, body)
                sent = None
                await conn.head
                if conn.error is not None and not conn.status:
                    raise conn.error
                return conn
            except BaseException as exc:
                conn.close()
                # A reused connection the upstream had already closed: nothing of this
                # request can have been processed, so an idempotent one without a body
                # may go again, once, on a fresh connection.
                if (
                    not reused
                    or not isinstance(exc, UpstreamUnavailable)
                    or conn.received_any
                    or body is not None
                    or method not in _IDEMPOTENT
                ):
                    raise
            finally:
                conn.unwatch_head()
            reused = False
            conn = await self._connect()

    def _send(
        self,
        conn: Connection,
        method: str,
        target: str,
        headers: Fields,
        body: AsyncIterable[bytes] | None,
    ) -> None:
        length = None
        if body is not None and not isinstance(headers, bytes):
            length = declared_length(headers)
        conn.start(head_only=method == "HEAD")
        conn.write(self._head(method, target, headers, body is not None and length is None))
        conn.sender = None
        if body is None:
            conn.request_sent = True
        else:
            conn.sender = asyncio.ensure_future(self._send_body(conn, body, length))
            conn.sender.add_done_callback(conn.on_sender_done)
        conn.watch_head(self._cfg.read_timeout)

    async def _send_body(
        self, conn: Connection, body: AsyncIterable[bytes], length: int | None
    ) -> None:
        """Write the body framed by ``length`` (None: chunked); only a body that ends
        exactly where its framing says marks the request sent (a Content-Length body as
        its last byte is written, before an answer to it can arrive)."""
        framed = FramedBody(body, length)
        async for chunk in framed:
            conn.write(chunk if length is not None else b"%x\r\n%b\r\n" % (len(chunk), chunk))
            conn.request_sent = framed.whole
            await conn.drain()
        if length is None:
            conn.write(b"0\r\n\r\n")
        conn.request_sent = True

    def _release(self, conn: Connection) -> None:
        """Back to the pool only under the one rule (Connection.reusable); else closed,
        which also stops a body still being sent."""
        if conn.reusable:
            conn.mark_idle()
            self._idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class Slots:
    """The pool's connection limit: asyncio.Semaphore, minus the coroutine its acquire()
    makes even when a slot is free (this is taken on every request).

    A released slot goes straight to the oldest live waiter, so free slots and waiters
    never coexist and try_take() needs no look at the queue.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self._free > 0:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot (after try_take() said no)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot as we were cancelled: pass it on
            else:
                # Still queued, unless release() already skipped it: a hung upstream must
                # not pile up cancelled waiters.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a cancelled waiter's future is done
                waiter.set_result(None)
                return
        self._free += 1


class _Exchange:
    """``async with transport.request(...) as response``: a pool slot and a connection for
    the response's lifetime. A class, not @asynccontextmanager: this is on every request,
    and the generator machinery cost more than the rest of the exchange's Python."""

    __slots__ = ("_args", "_conn", "_sent", "_transport")

    def __init__(
        self,
        transport: H1Transport,
        method: str,
        target: str,
        headers: Fields,
        body: AsyncIterable[bytes] | None,
        sent: Connection | None = None,
    ) -> None:
        self._transport = transport
        self._args = (method, target, headers, body)
        self._conn: Connection | None = None
        self._sent = sent  # already written on, its slot taken (H1Transport.adopt)

    async def __aenter__(self) -> UpstreamResponse:
        transport = self._transport
        if self._sent is None and not transport._slots.try_take():
            await transport._slots.take()
        try:
            conn = self._conn = await transport._send_with_retry(*self._args, self._sent)
        except BaseException:
            transport._slots.release()
            raise
        return conn.response(transport._cfg.read_timeout)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            self._transport.release_now(self._conn)
        else:
            self._transport._slots.release()


class Upgrade:
    """``async with transport.upgrade(...) as response``: a dedicated connection. On a 101,
    ``tunnel`` holds its transport and the bytes that came after the head, and the caller
    owns them; any other answer is a normal response, and the connection is closed after
    it (never pooled: it carried an upgrade request)."""

    __slots__ = ("_conn", "_fields", "_target", "_transport", "tunnel")

    def __init__(self, transport: H1Transport, target: str, fields: bytes) -> None:
        self._transport = transport
        self._target = target
        self._fields = fields
        self._conn: Connection | None = None
        self.tunnel: Tunnel | None = None

    async def __aenter__(self) -> UpstreamResponse:
        transport = self._transport
        conn = self._conn = await transport._connect()
        conn.upgrade = True
        try:
            transport._send(conn, "GET", self._target, self._fields, None)
            await conn.head
        except BaseException:
            conn.close()
            raise
        finally:
            conn.unwatch_head()
        if conn.error is not None and (not conn.status or conn.status == 101):
            conn.close()
            raise conn.error
        if conn.upgraded and conn.transport is not None:
            self.tunnel = Tunnel(conn.transport, conn.tunnel_bytes)
            conn.transport = None  # the tunnel's now; close() must not touch it
        return conn.response(transport._cfg.read_timeout)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._conn is not None:
            self._conn.close()


class Tunnel(NamedTuple):
    """The upstream side of an upgraded connection: its transport (reading paused) and
    the bytes that came with the 101's head."""

    transport: asyncio.Transport
    early: bytes
