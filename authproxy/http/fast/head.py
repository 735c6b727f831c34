"""Parse one request head for the fast front end, or say it is aiohttp's to serve.

``parse_head`` gets exactly the bytes up to and including the blank line. It returns a
FastRequest only for the plainest of requests: HTTP/1.1, origin-form target outside
/_authproxy/, a Host header, no body (no Content-Length other than 0, no
Transfer-Encoding), no Expect, no Upgrade other than a WebSocket handshake (the lifecycle
tunnels those), and every size comfortably below aiohttp's limits. Anything else, invalid
heads included, returns None: the caller hands the bytes to aiohttp, whose parser (the
same llhttp) and error answers then decide.

One exception: forward-auth's verify path (/_authproxy/v1/verify and below) is served here
even when the head declares a body, since verify never reads one: such a request is
answered and its connection closed (keep_alive False), the body never looked at.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import httptools
from aiohttp.http_parser import SINGLETON_HEADERS
from multidict import CIMultiDict

from authproxy.http.reserved import is_reserved, is_verify
from authproxy.http.websocket import is_websocket_upgrade

# Headers that make a request something other than a bodiless one, or ask for a reply
# we leave to aiohttp.
_NOT_SIMPLE: Final = frozenset({b"content-length", b"transfer-encoding", b"expect"})
# Fields RFC 9110 allows once: aiohttp refuses a repeat (400), so a repeat is aiohttp's.
_SINGLETONS: Final = frozenset(name.encode("ascii") for name in SINGLETON_HEADERS)
# Keep clear of aiohttp's exact limits: a head near one is aiohttp's to judge.
_LIMIT_MARGIN: Final = 32


class HeadLimits(NamedTuple):
    max_url: int
    max_field: int
    max_fields: int

    @classmethod
    def near(cls, max_url_bytes: int, max_header_bytes: int, max_headers: int) -> HeadLimits:
        """Limits a little below the server's: at the edge, aiohttp decides."""
        return cls(max_url_bytes - _LIMIT_MARGIN, max_header_bytes - _LIMIT_MARGIN, max_headers - 1)


class FastRequest:
    """A parsed bodiless request: what the lifecycle needs, nothing more."""

    __slots__ = ("headers", "keep_alive", "method", "target", "verify")

    def __init__(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        keep_alive: bool,
        verify: bool = False,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.keep_alive = keep_alive
        self.verify = verify  # forward-auth (RequestLifecycle.verify), not proxied


class FieldMemo:
    """What a connection keeps from one head to the next: the last header block it sent,
    parsed, and the request parser when its last message ended cleanly.

    HTTP/1.1 clients send the same header fields with every request of a keep-alive
    connection (what HPACK exploits in HTTP/2); only the request line changes. A repeated
    block is compared, not parsed again: issue 6 measured field parsing at about 3 µs of
    the fast path's 30. Making an llhttp parser costs about 1 µs more than feeding one
    (issue 15), and every head needs llhttp's judgement, new or not.
    """

    __slots__ = ("block", "headers", "simple", "sink")

    def __init__(self) -> None:
        self.block = b""
        self.headers: CIMultiDict[str] | None = None
        self.simple = False
        self.sink: _Head | None = None


def parse_head(head: bytes, limits: HeadLimits, memo: FieldMemo) -> FastRequest | None:
    """The request in ``head``, or None when it is not ours to serve.

    llhttp judges every head, repeated or not; the fields are then split from the bytes
    (one pass, not a Python callback per field), or taken from ``memo``.
    """
    if head[:1] in (b"\r", b"\n"):
        return None  # llhttp skips an empty line before the request line; we would not
    sink, memo.sink = memo.sink or _Head(), None
    sink.url, sink.complete = b"", False
    try:
        sink.parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # llhttp stops after an upgrade's head: judged below (CONNECT never passes)
    except httptools.HttpParserError:
        return None  # invalid heads
    else:
        if sink.complete and sink.keep_alive:
            # llhttp is between messages again: the next head may use the same parser.
            memo.sink = sink
    if not sink.complete or sink.version != "1.1" or len(sink.url) > limits.max_url:
        return None
    block = head[head.index(b"\r\n") + 2 :]  # llhttp found the request line's CRLF
    if block == memo.block:
        headers, simple = memo.headers, memo.simple
    else:
        headers, simple = _fields(block, limits)
        memo.block, memo.headers, memo.simple = block, headers, simple
    if headers is None:
        return None
    target = sink.url.decode("utf-8", "surrogateescape")
    if not target.startswith("/"):
        return None
    if is_reserved(target):
        if not is_verify(target):
            return None
        # A declared body is never read: answered, then the connection closes.
        return FastRequest(sink.method, target, headers, sink.keep_alive and simple, True)
    if not simple:
        return None
    if "Upgrade" in headers and not is_websocket_upgrade(sink.method, headers):
        return None  # h2c and the like: aiohttp serves them with Upgrade dropped
    return FastRequest(sink.method, target, headers, sink.keep_alive)


def _fields(block: bytes, limits: HeadLimits) -> tuple[CIMultiDict[str] | None, bool]:
    """The header fields of a head llhttp accepted (None when the request is not ours),
    and whether the request is simple: no body and no Expect declared.

    llhttp refused bare CRs and LFs, obs-fold and whitespace before a colon; counting LFs
    makes sure of the LFs, so these lines are exactly llhttp's fields.
    """
    lines = block[:-4].split(b"\r\n") if len(block) > 2 else []
    if (
        block.count(b"\n") != len(lines) + 1
        or len(lines) > limits.max_fields
        or (lines and max(map(len, lines)) > limits.max_field)
    ):
        return None, False  # (a line longer than a limit holds a name or value near one)
    fields = [line.partition(b":") for line in lines]
    lowered = [name.lower() for name, _, _ in fields]
    names = set(lowered)
    if b"host" not in names or (len(names) != len(lowered) and _repeats_a_singleton(lowered)):
        return None, False
    # As aiohttp takes them: values without surrounding whitespace (RFC 9110 §5.5); names
    # latin-1, values UTF-8 keeping any stray byte.
    headers = CIMultiDict(
        [
            (name.decode("latin-1"), value.strip(b" \t").decode("utf-8", "surrogateescape"))
            for name, _, value in fields
        ]
    )
    return headers, names.isdisjoint(_NOT_SIMPLE)


def _repeats_a_singleton(lowered: list[bytes]) -> bool:
    seen: set[bytes] = set()
    for name in lowered:
        if name in _SINGLETONS:
            if name in seen:
                return True
            seen.add(name)
    return False


class _Head:
    """httptools callbacks for the request line; llhttp still checks every field."""

    __slots__ = ("complete", "keep_alive", "method", "parser", "url", "version")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.method = self.version = ""
        self.keep_alive = False
        self.url = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        # Read here: llhttp forgets them once the message is complete.
        parser = self.parser
        self.method = parser.get_method().decode("ascii")
        self.version = parser.get_http_version()
        self.keep_alive = parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.complete = True
