"""What a front end hands the request lifecycle: one request, and the ways to answer it.

The two front ends (http/aio/, http/fast/) implement ``Exchange``; http/lifecycle.py and
http/live_answers.py use nothing else of them. ``upstream_fields`` is the one place that
turns an exchange and its key into the fields the upstream receives.
"""

from __future__ import annotations

import operator
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Mapping, Sequence
from itertools import compress
from typing import Any, Final, Protocol

from aiohttp import web
from multidict import MultiMapping

from authproxy.auth.verdict import Principal
from authproxy.http.admission import Admission
from authproxy.http.headers import (
    REQUEST_ID_FROM_END,
    HeaderLine,
    is_kept,
    kept_client_fields,
    our_fields,
    upstream_request_fields,
)
from authproxy.http.tunnel import ClientConnection
from authproxy.upstream.h1pool import encode_fields
from authproxy.upstream.transport import UpstreamResponse

_WIRE: Final = operator.attrgetter("wire")
_LOWERED: Final = operator.attrgetter("lowered")
# Header names whose verdict (kept or dropped) a connection remembers (_client_lines).
_MAX_NAMES: Final = 64


class UpstreamFieldsMemo:
    """A connection's last upstream header block, encoded around its X-Request-Id.

    A keep-alive client repeats the same header fields (the fast front end hands over the
    same object for a repeated block) and the same key; the fields the upstream receives
    then differ only in the request id, which is put back in its place. A block that is
    new is most often the last one with a line changed: its lines come encoded from the
    front end (Exchange.header_lines), and our fields are encoded again only when who is
    calling, or from where, changed.
    """

    __slots__ = (
        "after",
        "before",
        "caller",
        "headers",
        "kept",
        "ours_after",
        "ours_before",
        "principal",
    )

    def __init__(self) -> None:
        self.headers: object = None
        self.principal: Principal | None = None
        self.before = self.after = b""
        # (principal, peer, scheme, host) that ours_* encode, around X-Request-Id.
        self.caller: tuple[Principal, str, str, str] | None = None
        self.ours_before = self.ours_after = b""
        self.kept: dict[bytes, bool] = {}  # lower-cased name -> sent upstream; _client_lines


# nginx's "client closed request": logged and counted, never sent.
CLIENT_CLOSED_REQUEST: Final = 499


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
    def header_lines(self) -> Sequence[HeaderLine] | None:
        """``headers``' fields in order, each with its line encoded for the upstream, where
        the front end keeps them (the lean one); else None."""

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


class AtOnce(Exchange, Protocol):
    """An Exchange the lean front end began without a task (RequestLifecycle.proxy_now,
    verify_now): what is left to wait for runs in the connection's task."""

    keep_alive: bool  # the connection may carry another request after this one

    def resume(self, rest: Coroutine[Any, Any, bool]) -> None:
        """The rest of the request needs waits: run ``rest`` (whether the connection may
        carry another) in the connection's task."""


class GrantsAtOnce(AtOnce, Protocol):
    """An AtOnce exchange that can write forward-auth's yes without waiting (the lean
    front end's writes go straight to the transport; see RequestLifecycle.verify_now)."""

    def grant_now(self, identity: list[tuple[bytes, bytes]], extra: Mapping[str, str]) -> None:
        """grant() for a client reading its answers: written at once, never awaited."""


class RelaysAtOnce(AtOnce, Protocol):
    """An AtOnce exchange that can relay a whole upstream answer without waiting and
    carry on without a task (see RequestLifecycle.proxy_now)."""

    def writes_wait(self) -> bool:
        """Whether the client is there but not reading: an answer now would wait."""

    def must_drain(self) -> bool:
        """Whether what was written waits for the client to read it (flow control)."""

    def relay_now(
        self,
        status: int,
        reason: str,
        raw_headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        extra: Mapping[str, str],
    ) -> None:
        """relay() for an answer that arrived whole: written at once, never awaited."""

    async def drain_written(self) -> None:
        """Wait until the client has read enough of what was written (flow control)."""

    def finish(self, keep_alive: bool) -> None:
        """The request is over; whether the connection may carry another."""


Handle = Callable[[Exchange], Awaitable[int]]


def upstream_fields(
    x: Exchange, principal: Principal, admission: Admission, strip_prefixes: tuple[str, ...]
) -> list[tuple[str, str]]:
    """The fields the upstream receives: the client's minus hop-by-hop ones, Authorization
    and client copies of ours, plus the identity (X-Request-Id at REQUEST_ID_FROM_END)."""
    headers = x.headers
    who = admission.identity(
        principal,
        peer=x.peer,
        headers=headers,
        scheme=x.scheme,
        host=x.host,
        request_id=x.request_id,
    )
    return upstream_request_fields(
        headers.items(), who, headers.getall("Connection", []), strip_prefixes
    )


def encoded_upstream_fields(
    x: Exchange,
    principal: Principal,
    admission: Admission,
    strip_prefixes: tuple[str, ...],
    memo: UpstreamFieldsMemo,
) -> bytes:
    """upstream_fields' fields as the lines of an HTTP/1.1 head, made from ``memo`` where
    it holds them (see UpstreamFieldsMemo), which then holds them for the next request."""
    headers = x.headers
    if memo.headers is not headers or memo.principal != principal:  # a cache hit makes a
        # new, equal Principal. Our fields: encoded again only when who calls, or from
        # where, changed. From a trusted proxy they depend on its X-Forwarded-* too.
        caller = (principal, x.peer, x.scheme, x.host)
        if caller != memo.caller or admission.believes_forwarded(x.peer):
            who = admission.identity(
                principal, peer=x.peer, headers=headers, scheme=x.scheme, host=x.host, request_id=""
            )
            ours = our_fields(who)
            at = len(ours) + REQUEST_ID_FROM_END
            memo.ours_before = encode_fields(ours[:at])
            memo.ours_after = encode_fields(ours[at + 1 :])
            memo.caller = caller
        lines = x.header_lines
        if lines is None:
            connection = headers.getall("Connection", [])
            client = encode_fields(kept_client_fields(headers.items(), connection, strip_prefixes))
        else:
            client = _client_lines(lines, headers, strip_prefixes, memo)
        memo.before, memo.after = client + memo.ours_before, memo.ours_after
        memo.headers, memo.principal = headers, principal
    return b"%sX-Request-Id: %s\r\n%s" % (memo.before, x.request_id.encode("ascii"), memo.after)


def _client_lines(
    lines: Sequence[HeaderLine],
    headers: MultiMapping[str],
    strip_prefixes: tuple[str, ...],
    memo: UpstreamFieldsMemo,
) -> bytes:
    """The client's fields the upstream may see, as lines. Unless a Connection header
    lists fields to drop, whether a line is kept depends on its name alone: each name's
    verdict is remembered for the connection, so a line never seen before (a request id,
    a counter) is judged by its name, in C (map, compress), not in a Python loop."""
    connection = headers.getall("Connection", [])
    if connection:
        return b"".join(map(_WIRE, kept_client_fields(lines, connection, strip_prefixes)))
    kept = memo.kept
    names = list(map(_LOWERED, lines))
    verdicts = list(map(kept.get, names))
    if None in verdicts:
        if len(kept) > _MAX_NAMES:  # a client inventing names costs memory up to here
            kept.clear()
        for line in lines:
            if line.lowered not in kept:
                kept[line.lowered] = is_kept(line.name, strip_prefixes)
        verdicts = list(map(kept.get, names))
    return b"".join(compress(map(_WIRE, lines), verdicts))
