"""The lean HTTP/1.1 front end: one client connection, serving the hot path itself.

Why: issue 6 measured aiohttp's server and its request objects at more than half of the
time of a proxied request. Most proxied requests are the simplest HTTP there is: an
HTTP/1.1 GET (or HEAD, DELETE...) without a body. For those this protocol splits the
request head off the byte stream, parses it with llhttp (httptools, the parser aiohttp
uses too) and hands it to exchange.py, which runs it through the shared request
lifecycle and answers on the socket directly.

Anything else goes to aiohttp, byte for byte: this protocol hands the connection to
aiohttp's RequestHandler (server/guards.py) with every byte it has not consumed, and aiohttp
serves that connection from then on. That covers requests with a body or ``Expect``,
protocol upgrades, HTTP/1.0, the reserved /_authproxy/ paths, parse errors and heads that
are near a size limit (so aiohttp's JSON 400/414/431 answers stay the only ones). Because
a request without a body ends exactly at its blank line, the hand-off point is always
known; pipelined requests are served one after another.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
from collections.abc import Coroutine
from typing import Any, Final, Protocol, cast

import structlog

from authproxy.http.exchange import UpstreamFieldsMemo
from authproxy.http.fast.head import FastRequest, FieldMemo, HeadLimits, parse_head
from authproxy.http.tunnel import ClientConnection

log = structlog.get_logger(__name__)

_END_OF_HEAD = b"\r\n\r\n"
# A head still incomplete at this size goes to aiohttp, which applies the real limits.
_MAX_HEAD_BUFFER = 64 * 1024
# Bytes buffered behind a request in progress before we stop reading the socket.
_MAX_PIPELINE_BUFFER = 256 * 1024


class Limits(Protocol):
    """The server's connection limits (server/guards.py's Guard)."""

    @property
    def header_timeout(self) -> float: ...
    @property
    def idle_timeout(self) -> float: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def max_url_bytes(self) -> int: ...
    @property
    def max_header_bytes(self) -> int: ...
    @property
    def max_headers(self) -> int: ...


class Later(enum.Enum):
    """answer_now's word for a request under way without a task: the connection hears
    how it ended through ``finish``, or gets the rest to run through ``resume``."""

    LATER = "later"


LATER: Final = Later.LATER
# What the connection's serving task awaits: a request's answer (or its rest); whether the
# connection may carry another request.
Job = Coroutine[Any, Any, bool]


class Answers(Protocol):
    """What a FastConnection calls for each request it parsed (exchange.py's FastFront)."""

    async def answer(self, conn: FastConnection, request: FastRequest) -> bool:
        """Answer ``request``; whether the connection may carry another."""

    def answer_now(self, conn: FastConnection, request: FastRequest) -> bool | Later | None:
        """Answer ``request`` at once if nothing needs a wait (whether the connection may
        carry another); LATER: under way without a task; None: nothing was done."""


class ConnectionHost(Protocol):
    """What a FastConnection needs of the server that made it (server/guards.py)."""

    @property
    def guard(self) -> Limits: ...
    @property
    def fast_connections(self) -> set[FastConnection]: ...
    @property
    def answers(self) -> Answers: ...

    def open_connections(self) -> int: ...
    def aiohttp_handler(self) -> asyncio.Protocol: ...


class FastConnection(asyncio.Protocol):
    """One client connection on the fast path (see the module docstring)."""

    def __init__(self, server: ConnectionHost) -> None:
        self._server = server
        self._answers = server.answers
        self._loop = asyncio.get_running_loop()
        cfg = server.guard
        self._limits = HeadLimits.near(cfg.max_url_bytes, cfg.max_header_bytes, cfg.max_headers)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.scheme = "http"  # "https" on a TLS listener (the transport is then TLS's)
        self._buffer = bytearray()
        self._fields = FieldMemo()
        self.upstream_memo = UpstreamFieldsMemo()
        self._scanned = 0  # bytes of _buffer already searched for the end of a head
        self.busy = False  # a request is being answered
        self.closing = False  # close once the answer in progress is out
        # The serving task (see _serve), and the future it waits on between requests.
        self.task: asyncio.Task[None] | None = None
        self._waiting: asyncio.Future[Job | None] | None = None
        self._until_idle: asyncio.Future[None] | None = None  # for a shutdown (until_idle)
        self._reading_paused = False
        self._write_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._served = 0
        # One lazy timer per connection (see _on_timer) instead of a new one per request:
        # creating and cancelling a loop timer cost more than the rest of the framing.
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._server.open_connections() >= self._server.guard.max_connections:
            log.warning("connection_refused_over_limit", limit=self._server.guard.max_connections)
            transport.close()
            return
        # cast, not isinstance: uvloop's transports do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self._server.fast_connections.add(self)
        self._timer = self._loop.call_later(self._server.guard.header_timeout, self._on_timer)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self.busy:
            request = self._next_request()
            if request is not None:
                self._hand_to_task(self._answers.answer(self, request))
        elif len(self._buffer) > _MAX_PIPELINE_BUFFER and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server.fast_connections.discard(self)
        self._cancel_timer()
        self.transport = None
        self._wake_writer(ConnectionResetError("client closed the connection"))
        self._end_task()
        self._now_not_busy()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_writer(None)

    # -- request framing
    def _next_request(self) -> FastRequest | None:
        """Serve the complete requests in the buffer at once while each needs no wait;
        the first that needs one (the connection is then busy), or None when none is
        left or the connection went to aiohttp."""
        answered_now = False
        while self.transport is not None and not self.busy:
            request = self._take_request()
            if request is None:
                break
            keep_alive = self._answers.answer_now(self, request)
            if keep_alive is None:
                self.busy = True
                return request
            if keep_alive is LATER:
                self.busy = True  # until finish() or the rest resume() runs
                return None
            answered_now = True
            if not self._may_continue(keep_alive):
                return None
        # A loop, not a call per answer: a long pipeline of requests answered at once
        # must not recurse.
        if answered_now and not self.busy and self.transport is not None:
            self._now_idle()
        return None

    def _hand_to_task(self, job: Job) -> None:
        """``job`` to the connection's serving task: the one waiting for it, or a new one."""
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.done():
            waiting.set_result(job)
            return
        # A fresh context: no log field of startup can leak in; serve() resets what each
        # request sets, so none leaks into the next request either.
        self.task = self._loop.create_task(self._serve(job), context=contextvars.Context())

    def _take_request(self) -> FastRequest | None:
        """The next complete request head in the buffer, taken out of it; None when none
        is complete yet, or when the connection went to aiohttp."""
        buffer = self._buffer
        # Only bytes not yet looked at (plus the 3 before them, for a split blank line):
        # a head trickling in one byte at a time must not be rescanned each time.
        end = buffer.find(_END_OF_HEAD, max(0, self._scanned - 3))
        if end < 0:
            start = self._scanned
            if start > 0 and buffer[start - 1] == 0x0D:  # a CR whose LF is new
                start -= 1
            new = buffer[start:]
            self._scanned = len(buffer)
            # A bare LF line ending never makes our blank line: aiohttp refuses it (400).
            if len(buffer) > _MAX_HEAD_BUFFER or new.count(b"\n") != new.count(b"\r\n"):
                self._hand_off()
            return None
        request = parse_head(bytes(buffer[: end + 4]), self._limits, self._fields)
        if request is None:
            self._hand_off()
            return None
        del buffer[: end + 4]
        self._scanned = 0
        self._served += 1
        return request

    async def _serve(self, job: Job) -> None:
        """The connection's serving task: runs ``job``, then each later one (a request
        that needs a wait, or the rest of one under way: resume()), waiting between them.
        One task per connection, not per request: creating and registering a task cost
        about 5% of a proxied request (py-spy, issue 15)."""
        next_job: Job | None = job
        waiting: asyncio.Future[Job | None] | None = None
        try:
            while next_job is not None:
                keep_alive = await next_job
                self._now_not_busy()
                request = self._after_answer(keep_alive)
                next_job = None if request is None else self._answers.answer(self, request)
                if next_job is None and self.transport and not self.transport.is_closing():
                    waiting = self._waiting = self._loop.create_future()
                    # connection_lost and _hand_off end the wait with None.
                    next_job = await waiting
                    waiting = None
        except BaseException:
            # Cancelled (a shutdown past its grace period): this connection ends here. A
            # job handed over in the same turn as the cancel never starts: closed, so that
            # no coroutine is left never awaited.
            if waiting is not None and waiting.done() and not waiting.cancelled():
                handed = waiting.result()
                if handed is not None:
                    handed.close()
            self._now_not_busy()
            self._may_continue(False)
            raise
        finally:
            self.task = None

    def finish(self, keep_alive: bool) -> None:
        """A request answer_now left under way (LATER) is over; whether the connection
        may carry another."""
        self._now_not_busy()
        request = self._after_answer(keep_alive)
        if request is not None:
            self._hand_to_task(self._answers.answer(self, request))

    def resume(self, rest: Job) -> None:
        """What is left of a request under way (LATER) needs waits: ``rest`` runs in the
        serving task, and says at its end whether the connection may carry another.
        From the next turn of the loop: called while the task is still busy with the
        request before (answer_now inside _after_answer), this must not start a second."""
        self._loop.call_soon(self._hand_to_task, rest)

    def until_idle(self) -> asyncio.Future[None]:
        """Done once no answer is in progress (a shutdown waits for it)."""
        if not self.busy:
            done: asyncio.Future[None] = self._loop.create_future()
            done.set_result(None)
            return done
        if self._until_idle is None:
            self._until_idle = self._loop.create_future()
        return self._until_idle

    def _now_not_busy(self) -> None:
        self.busy = False
        idle, self._until_idle = self._until_idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)

    def _end_task(self) -> None:
        """The serving task, if it waits for a request, ends: none will come."""
        waiting, self._waiting = self._waiting, None
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def _after_answer(self, keep_alive: bool) -> FastRequest | None:
        """After an answer (in the task, or finish()): the next request that needs the
        task, if any."""
        if not self._may_continue(keep_alive):
            return None
        if self._buffer:
            request = self._next_request()
            if request is not None or self.transport is None:
                return request  # the next request needs the task, or aiohttp has it
        if not self.busy:
            self._now_idle()
        return None

    def _may_continue(self, keep_alive: bool) -> bool:
        """After an answer: whether another request may follow on this connection (else
        it is closed); reading resumes if a full pipeline had paused it."""
        if self.transport is None or self.transport.is_closing():
            return False  # closed or aborted (a cut stream): no pipelined request may follow
        if not keep_alive or self.closing:
            self.transport.close()
            return False
        if self._reading_paused:
            self.transport.resume_reading()
            self._reading_paused = False
        return True

    def _now_idle(self) -> None:
        now = self._idle_since = self._loop.time()
        idle_deadline = now + self._server.guard.idle_timeout
        if self._timer is None or self._timer.when() > idle_deadline:
            # Only after the first answer (the head timer may be due later) or a hand-back
            # from busy: in steady state the armed timer is due sooner and re-arms itself.
            self._cancel_timer()
            self._timer = self._loop.call_at(idle_deadline, self._on_timer)

    def _hand_off(self) -> None:
        """Give this connection and every unconsumed byte to aiohttp's request handler."""
        transport = self.transport
        if transport is None:
            return
        self._server.fast_connections.discard(self)
        self._cancel_timer()
        self.transport = None
        self._end_task()
        handler = self._server.aiohttp_handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        data, self._buffer = bytes(self._buffer), bytearray()
        if data:
            handler.data_received(data)

    def hand_over_to_tunnel(self) -> ClientConnection:
        """After a 101: the transport and the bytes read past the handshake go to a tunnel
        (http/tunnel.py), which calls connection_lost here when the connection ends. Until
        then the connection still counts against server.max_connections."""
        transport = self.transport
        if transport is None:
            raise ConnectionResetError("client closed the connection")
        self._cancel_timer()
        early, self._buffer = bytes(self._buffer), bytearray()
        self._reading_paused = False
        return ClientConnection(transport, self, early)

    # -- timers
    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        """Before the first request: the head timeout. Then: the idle timeout, counted
        from the end of the last answer; re-armed for what is left while in use."""
        self._timer = None
        guard = self._server.guard
        if self._served == 0:
            log.info("request_head_timeout", timeout=guard.header_timeout)
            self.close()
            return
        idle = self._loop.time() - self._idle_since
        if not self.busy and idle >= guard.idle_timeout:
            self.close()
            return
        left = guard.idle_timeout if self.busy else guard.idle_timeout - idle
        self._timer = self._loop.call_later(left, self._on_timer)

    # -- used by exchange.py and the server
    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("client closed the connection")
        self.transport.write(data)

    def can_write_now(self) -> bool:
        """Whether an answer written now goes out without a wait: the client is there and
        reads what we send."""
        return (
            not self._writing_paused
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def writes_wait(self) -> bool:
        """Whether the client is there but not reading what we send."""
        return self._writing_paused and self.transport is not None

    def must_drain(self) -> bool:
        """Whether drain() would wait or raise; checked first, since most answers need no
        wait and a coroutine per answer is measurable (issue 6)."""
        return self._writing_paused or self.transport is None

    async def drain(self) -> None:
        """Wait while the client reads slower than we write (flow control)."""
        if self.transport is None:
            raise ConnectionResetError("client closed the connection")
        if self._writing_paused:
            self._write_waiter = self._loop.create_future()
            await self._write_waiter

    def _wake_writer(self, error: BaseException | None) -> None:
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close now if idle; otherwise once the answer in progress has been written."""
        self.closing = True
        if not self.busy and self.transport is not None:
            self.transport.close()
