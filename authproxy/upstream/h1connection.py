"""One upstream HTTP/1.1 connection: an asyncio protocol parsing responses with httptools.

All tenants share these connections, and the upstream believes the identity headers on
every request head it parses, so a connection that is out of step with its framing would
let bytes one client chose be read as a request head (issue 13). Hence one rule, checked
by the pool on release (``reusable``): a connection carries another request only when the
whole request as framed was written before the answer came, and the whole response as
framed was read, with no byte left over. Anything else closes it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

import httptools

from authproxy.errors import AuthProxyError
from authproxy.upstream.transport import (
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
    refusal,
)

_HIGH_WATER = 256 * 1024  # buffered response bytes before we stop reading the socket
_LOW_WATER = 64 * 1024


class Connection(asyncio.Protocol):
    """One upstream connection; parses one response at a time."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, max_head_bytes: int, max_fields: int
    ) -> None:
        self._loop = loop
        self._max_head_bytes = max_head_bytes
        self._max_fields = max_fields
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._idle_since = loop.time()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.sender: asyncio.Future[None] | None = None  # the request body being sent
        # The wait for a response head: a deadline and one lazy timer per connection, not a
        # timer per request (making and cancelling one cost more than parsing the head).
        self._head_deadline: float | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_timeout = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = False
        # A dedicated connection carrying a WebSocket opening handshake (upgrade.py): a
        # 101 is its success, and the bytes after its head are the tunnel's.
        self.upgrade = False
        self.upgraded = False
        self.tunnel_bytes = b""
        self._reset(head_only=False)

    def _reset(self, *, head_only: bool) -> None:
        # One parser per connection: llhttp reads response after response. Not after a
        # HEAD: it never learns the request was a HEAD, so it still expects the body the
        # head announced; that response ends early, and the next needs a fresh parser.
        if head_only or self._head_only:
            self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self.status = 0  # of the final answer: interim 1xx heads leave it 0
        self.reason = ""
        self.headers: list[tuple[bytes, bytes]] = []  # as received: see UpstreamResponse
        self.request_sent = False  # the whole request, as framed, is written
        self._answered_early = False  # the final head came before the request was sent
        self.received_any = False
        # Bytes fed to the parser before the final head completed (None after it): the
        # head limit must hold before llhttp buffers a field, not after.
        self._head_fed: int | None = 0
        self._fields = 0
        # After the head: bytes fed that were not body (chunk framing, trailers), and what
        # chunk framing may take of them.
        self._framing_fed = 0
        self._framing_allowed = self._max_head_bytes  # trailers share the head limit
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

    # The pool's clock is the connection's loop: asyncio.get_running_loop() costs a
    # getpid() system call on every call in CPython 3.11, twice per request here.
    def mark_idle(self) -> None:
        self._idle_since = self._loop.time()

    def idle_seconds(self) -> float:
        return self._loop.time() - self._idle_since

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self.upgraded:  # before the tunnel takes the transport over
            self.tunnel_bytes += data
            return
        if self.complete:
            # Bytes after a complete response (a body on a HEAD answer, a second response):
            # the upstream is out of step with us. The answer stands; the connection goes.
            self.close()
            return
        if self._head_fed is not None:
            room = self._max_head_bytes - self._head_fed
            if len(data) > room:
                self._head_fed += room
                self._feed(data[:room])
                if self._head_fed is not None and not self.closed:
                    self._fail_oversize("response head")
                    return
                # The head ended inside the first ``room`` bytes; the rest is whatever
                # follows it: body, bytes after a complete answer, or, after a 101, the
                # tunnel's (never the parser's: it would take a WebSocket frame for a
                # second response and close the tunnel's connection).
                if not self.closed:
                    self.data_received(data[room:])
                return
            else:
                self._head_fed += len(data)
        else:
            self._framing_fed += len(data)
        self._feed(data)
        if self._framing_fed > self._framing_allowed and not self.closed:
            self._fail_oversize("chunk framing and trailers")

    def _fail_oversize(self, what: str) -> None:
        self.fail(
            UpstreamUnavailable(f"{what} over upstream.max_header_bytes ({self._max_head_bytes})")
        )

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                self.fail(UpstreamUnavailable(str(exc.__context__)))
            else:  # _OutOfStep: bytes after the answer
                self.close()
        except httptools.HttpParserUpgrade as exc:
            if self.upgraded:  # llhttp stops after a 101's head: the rest is the tunnel's
                self.tunnel_bytes += data[int(exc.args[0]) :]
            elif self.complete:
                self.close()
            else:
                self.fail(UpstreamUnavailable(f"malformed response: {exc}"))
        except httptools.HttpParserError as exc:
            if self.upgraded:  # llhttp's answer to a 101 whose Connection lacks "upgrade"
                self.upgraded = False
                self.fail(UpstreamUnavailable("a 101 without Connection: upgrade"))
            elif self.complete:  # garbage after the answer: the connection goes
                self.close()
            else:
                self.fail(UpstreamUnavailable(f"malformed response: {exc}"))

    def eof_received(self) -> bool:
        if self.head.done() and not self.complete and self._until_close():
            self._finish()  # a body delimited by the end of the connection (RFC 9112 §6.3)
            self.keep_alive = False
        elif not self.complete:
            self.fail(UpstreamUnavailable("upstream closed the connection"))
        return False

    def _until_close(self) -> bool:
        names = {name.lower() for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._can_write.set()
        if not self.complete:
            self.fail(UpstreamUnavailable(f"connection lost: {exc or 'closed'}"))

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:
            # A second response in the bytes of the first: stop before its status and
            # fields are taken for the answer's (the parser is reused: see _reset).
            raise _OutOfStep

    def on_status(self, status: bytes) -> None:
        self.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > self._max_fields:
            raise _Refused(f"more than upstream.max_headers ({self._max_fields}) fields")
        if self._head_fed is None:
            # A trailer field (RFC 9110 §6.5): never merged into the head, which may be
            # on its way to the client already; dropped, as nginx and Envoy's HTTP/1 do.
            return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status == 101 and self.upgrade:
            self._upgraded_head()
            return
        # A 101 is the upstream out of step (no request asks for an upgrade: Upgrade is
        # hop-by-hop and never forwarded); relaying it would open a tunnel in any proxy
        # in front of us with HTTP still flowing here. The head size is held in
        # data_received, before llhttp buffers it.
        problem = refusal(status, 0, self._max_head_bytes)
        if problem is not None:
            raise _Refused(problem)
        self._fields = 0
        if status < 200:
            # Interim (100, 102, 103): consumed, never relayed; wait for the final head.
            self.headers, self.reason = [], ""
            return
        self.status = status
        self._head_fed = None
        # An answer before the whole body went: the upstream may or may not read the rest
        # of it (RFC 9112 §9.3 lets it close instead); never bet another request on it.
        self._answered_early = not self.request_sent
        self.keep_alive = self._parser.should_keep_alive()
        if not self.head.done():
            self.head.set_result(None)
        if self._head_only or status in (204, 304):
            self._finish()

    def _upgraded_head(self) -> None:
        """A 101 to our upgrade request: the head is the answer, the connection the
        tunnel's from here on (paused until the tunnel reads it)."""
        self.status, self.upgraded, self.complete = 101, True, True
        self._head_fed = None
        if self.transport is not None:
            self.transport.pause_reading()
        if not self.head.done():
            self.head.set_result(None)

    def on_chunk_header(self) -> None:
        # A chunk-size line and its CRLFs: room for 16 hex digits and a short extension.
        self._framing_allowed += 64

    def on_body(self, body: bytes) -> None:
        if self.complete:  # a body on an answer that has none (HEAD, 204, 304)
            raise _OutOfStep
        if not self.status:
            # RFC 9110 §15.2: a 1xx ends with its head. llhttp reads a body on one that
            # declares framing (a 199 with Content-Length); those bytes must never be
            # taken for the final answer's.
            raise _Refused("an interim 1xx response with a body")
        self._framing_fed -= len(body)
        self._chunks.append(body)
        self._buffered += len(body)
        self._wake()
        if self._buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True

    def on_message_complete(self) -> None:
        if self.status:  # not after an interim head
            self._finish()

    def _finish(self) -> None:
        self.complete = True
        self._wake()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def fail(self, error: Exception) -> None:
        """The exchange cannot complete: the error goes to whoever waits, the connection
        closes (no more bytes are read into a parser that is out of step)."""
        if self.error is None:
            self.error = error
        if not self.head.done():
            self.head.set_exception(error)
        self._wake()
        self.close()

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

    def response(self, read_timeout: float) -> UpstreamResponse:
        """The answer whose head arrived, its body read from here (``read_timeout`` s at
        most between two pieces)."""
        return UpstreamResponse(
            status=self.status,
            reason=self.reason,
            raw_headers=self.headers,
            body=self.body(read_timeout),
            take_whole_body=self.take_complete_body,
            arrived=self.arrived,
        )

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
            timer = self._loop.call_later(read_timeout, expire, waiter, read_timeout)
            try:
                await waiter
            finally:
                timer.cancel()
                self._data_waiter = None

    def watch_head(self, timeout: float) -> None:
        """Fail ``head`` with UpstreamTimeout unless it arrives within ``timeout`` s."""
        self._head_timeout = timeout
        self._head_deadline = self._loop.time() + timeout
        if self._head_timer is None:
            self._head_timer = self._loop.call_later(timeout, self._check_head_deadline)

    def unwatch_head(self) -> None:
        self._head_deadline = None

    def _check_head_deadline(self) -> None:
        self._head_timer = None
        if self._head_deadline is None or self.closed:
            return
        left = self._head_deadline - self._loop.time()
        if left <= 0:
            expire(self.head, self._head_timeout)
        else:
            self._head_timer = self._loop.call_later(left, self._check_head_deadline)

    def arrived(self) -> bool:
        return self.complete and self.error is None

    def take_complete_body(self) -> bytes | None:
        """The whole body if the response is already complete (then ``body`` yields
        nothing more), else None."""
        if not self.arrived():
            return None
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self.transport.resume_reading()
            self._reading_paused = False
        return data

    def on_sender_done(self, sender: asyncio.Future[None]) -> None:
        """A request that could not be sent whole ends the exchange: the wait for the
        response head ends with that failure, and a response already under way is cut
        (the connection closes; bytes already received are still delivered)."""
        if sender.cancelled() or sender.exception() is None:
            return
        if not self.head.done():
            self.head.set_exception(send_error(sender.exception()))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.sender is not None and not self.sender.done():
            self.sender.cancel()
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self.transport is not None:
            self.transport.close()

    @property
    def reusable(self) -> bool:
        """The pool's one rule (see the module docstring): both messages completed
        exactly, the upstream keeps the connection, and nothing went wrong or is left."""
        return (
            self.request_sent
            and not self._answered_early
            and self.complete
            and self.keep_alive
            and self.error is None
            and not self.closed
            and not self._chunks
        )


class _OutOfStep(Exception):
    """Raised in a parser callback: the upstream sent more than the one answer asked for."""


class _Refused(Exception):
    """Raised in a parser callback: a response this hop never relays (502)."""


def send_error(error: BaseException | None) -> BaseException:
    """A failed body send as the request's error: domain errors as they are, else 502."""
    if isinstance(error, AuthProxyError | UpstreamUnavailable | UpstreamTimeout):
        return error
    return UpstreamUnavailable(f"sending the request body failed: {error}")


def expire(waiter: asyncio.Future[None], seconds: float) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout(f"no response bytes for {seconds} s"))
