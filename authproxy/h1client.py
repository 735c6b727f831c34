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
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import httptools
from multidict import CIMultiDict
from yarl import URL

from authproxy.config import UpstreamConfig
from authproxy.errors import AuthProxyError
from authproxy.upstream import UpstreamResponse, UpstreamTimeout, UpstreamUnavailable

_HIGH_WATER = 256 * 1024  # buffered response bytes before we stop reading the socket
_LOW_WATER = 64 * 1024
_IDLE_SECONDS = 30.0  # below typical upstream keep-alive timeouts (nginx: 75 s)
# Safe to send again when a reused connection turns out dead before any response byte.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class _Connection(asyncio.Protocol):
    """One upstream connection; parses one response at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.last_used = loop.time()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.sender: asyncio.Future[None] | None = None  # the request body being sent
        self._reset(head_only=False)

    def _reset(self, *, head_only: bool) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.received_any = False
        self.head: asyncio.Future[None] = self._loop.create_future()
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._data_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False

    def start(self, *, head_only: bool) -> None:
        self._reset(head_only=head_only)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self.complete:
            return  # bytes after a complete response (e.g. a HEAD answer's body): ignore
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamUnavailable(f"malformed response: {exc}"))

    def eof_received(self) -> bool:
        if self.head.done() and not self.complete and self._until_close():
            self._finish()  # a body delimited by the end of the connection (RFC 9112 §6.3)
            self.keep_alive = False
        elif not self.complete:
            self._fail(UpstreamUnavailable("upstream closed the connection"))
        return False

    def _until_close(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return "content-length" not in names and "transfer-encoding" not in names

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._can_write.set()
        if not self.complete:
            self._fail(UpstreamUnavailable(f"connection lost: {exc or 'closed'}"))

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        self.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200 and self.status != 101:
            self.headers, self.reason = [], ""  # interim response: wait for the final one
            return
        self.keep_alive = self._parser.should_keep_alive()
        if not self.head.done():
            self.head.set_result(None)
        if self._head_only or self.status in (204, 304):
            self._finish()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        self._wake()
        if self._buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True

    def on_message_complete(self) -> None:
        if self.status and not (100 <= self.status < 200 and self.status != 101):
            self._finish()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if not self.head.done():
            self.head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        waiter = self._data_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # used by the transport
    async def drain(self) -> None:
        await self._can_write.wait()
        if self.closed:
            raise UpstreamUnavailable("connection closed while sending")

    def write(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise UpstreamUnavailable("connection closed while sending")
        self.transport.write(data)

    async def body(self, read_timeout: float) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._reading_paused and self._buffered < _LOW_WATER and self.transport:
                    self.transport.resume_reading()
                    self._reading_paused = False
                yield chunk
                continue
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            # A plain future and a timer: cheaper per wait than wait_for, which makes a task.
            waiter = self._data_waiter = self._loop.create_future()
            timer = self._loop.call_later(read_timeout, _expire, waiter, read_timeout)
            try:
                await waiter
            finally:
                timer.cancel()
                self._data_waiter = None

    def on_sender_done(self, sender: asyncio.Future[None]) -> None:
        """A failed body send ends the wait for the response head with that failure."""
        if sender.cancelled() or sender.exception() is None or self.head.done():
            return
        self.head.set_exception(_send_error(sender.exception()))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def reusable(self) -> bool:
        return (self.complete and self.keep_alive and self.error is None and not self.closed
                and not self._chunks)


class H1Transport:
    """UpstreamTransport over pooled raw HTTP/1.1 connections (see the module docstring)."""

    def __init__(self, cfg: UpstreamConfig) -> None:
        url = URL(cfg.url)
        self._host = url.host or ""
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = url.scheme == "https"
        self._base_path = url.raw_path.rstrip("/").encode("utf-8", "surrogateescape")
        host_header = url.raw_host or ""
        if url.port is not None and not url.is_default_port():
            host_header += f":{url.port}"
        self._host_header = host_header.encode("ascii")
        self._cfg = cfg
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(cfg.max_connections)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(
                lambda: _Connection(loop), self._host, self._port, ssl=self._ssl or None),
                self._cfg.connect_timeout)
        except TimeoutError:
            raise UpstreamTimeout(f"connect timed out after {self._cfg.connect_timeout} s"
                                  ) from None
        except OSError as exc:
            raise UpstreamUnavailable(f"connect failed: {exc}") from exc
        return conn

    def _take_idle(self) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.last_used < _IDLE_SECONDS:
                return conn
            conn.close()
        return None

    def _head(self, method: str, target: str, headers: CIMultiDict[str],
              chunked: bool) -> bytes:
        lines = [method.encode("ascii") + b" " + self._base_path
                 + target.encode("utf-8", "surrogateescape") + b" HTTP/1.1",
                 b"Host: " + self._host_header]
        for name, value in headers.items():
            lines.append(name.encode("latin-1") + b": "
                         + value.encode("utf-8", "surrogateescape"))
        if chunked:
            lines.append(b"Transfer-Encoding: chunked")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    @asynccontextmanager
    async def request(self, method: str, target: str, headers: CIMultiDict[str],
                      body: AsyncIterable[bytes] | None) -> AsyncIterator[UpstreamResponse]:
        async with self._slots:
            conn = await self._send_with_retry(method, target, headers, body)
            try:
                yield UpstreamResponse(status=conn.status, reason=conn.reason,
                                       headers=conn.headers,
                                       body=conn.body(self._cfg.read_timeout))
            finally:
                self._release(conn)

    async def _send_with_retry(self, method: str, target: str, headers: CIMultiDict[str],
                               body: AsyncIterable[bytes] | None) -> _Connection:
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._exchange(conn, method, target, headers, body)
            except UpstreamUnavailable:
                conn.close()
                # A reused connection the upstream had already closed: nothing of this
                # request can have been processed, so an idempotent one without a body
                # may go again, once, on a fresh connection.
                if conn.received_any or body is not None or method not in _IDEMPOTENT:
                    raise
        return await self._exchange(await self._connect(), method, target, headers, body)

    async def _exchange(self, conn: _Connection, method: str, target: str,
                        headers: CIMultiDict[str], body: AsyncIterable[bytes] | None
                        ) -> _Connection:
        """Send the request (the body in the background) and wait for the response head."""
        chunked = body is not None and "Content-Length" not in headers
        conn.start(head_only=method == "HEAD")
        conn.write(self._head(method, target, headers, chunked))
        conn.sender = None
        if body is not None:
            conn.sender = asyncio.ensure_future(self._send_body(conn, body, chunked))
            conn.sender.add_done_callback(conn.on_sender_done)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._cfg.read_timeout, _expire, conn.head,
                                self._cfg.read_timeout)
        try:
            await conn.head
        except BaseException:
            conn.close()
            if conn.sender is not None:
                conn.sender.cancel()
            raise
        finally:
            timer.cancel()
        if conn.error is not None and not conn.status:
            conn.close()
            raise conn.error
        return conn

    async def _send_body(self, conn: _Connection, body: AsyncIterable[bytes],
                         chunked: bool) -> None:
        async for chunk in body:
            if not chunk:
                continue
            conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await conn.drain()
        if chunked:
            conn.write(b"0\r\n\r\n")

    def _release(self, conn: _Connection) -> None:
        if conn.sender is not None and not conn.sender.done():
            conn.sender.cancel()  # the upstream answered before taking the whole body
            conn.close()
        if conn.reusable:
            conn.last_used = asyncio.get_running_loop().time()
            self._idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _send_error(error: BaseException | None) -> BaseException:
    """A failed body send as the request's error: domain errors as they are, else 502."""
    if isinstance(error, AuthProxyError | UpstreamUnavailable | UpstreamTimeout):
        return error
    return UpstreamUnavailable(f"sending the request body failed: {error}")


def _expire(waiter: asyncio.Future[None], seconds: float) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout(f"no response bytes for {seconds} s"))
