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

import operator
from typing import Final, NamedTuple

import httptools
from aiohttp.http_parser import SINGLETON_HEADERS
from multidict import CIMultiDict

from authproxy.http.headers import HeaderLine
from authproxy.http.reserved import is_reserved, is_verify
from authproxy.http.websocket import is_websocket_upgrade

# Headers that make a request something other than a bodiless one, or ask for a reply
# we leave to aiohttp.
_NOT_SIMPLE: Final = frozenset({b"content-length", b"transfer-encoding", b"expect"})
# Fields RFC 9110 allows once: aiohttp refuses a repeat (400), so a repeat is aiohttp's.
_SINGLETONS: Final = frozenset(name.encode("ascii") for name in SINGLETON_HEADERS)
# HeaderLine's fields, taken in C (operator) rather than by a comprehension.
_LOWERED: Final = operator.itemgetter(2)
_NAME_AND_VALUE: Final = operator.itemgetter(0, 1)
_new_tuple: Final = tuple.__new__
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

    __slots__ = ("header_lines", "headers", "keep_alive", "method", "target", "verify")

    def __init__(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        keep_alive: bool,
        verify: bool = False,
        header_lines: list[HeaderLine] | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.keep_alive = keep_alive
        self.verify = verify  # forward-auth (RequestLifecycle.verify), not proxied
        self.header_lines = header_lines  # headers' fields, each with its upstream line


class FieldMemo:
    """What a connection keeps from one head to the next: the last header block it sent,
    parsed, its lines parsed one by one, and the request parser when its last message
    ended cleanly.

    HTTP/1.1 clients send the same header fields with every request of a keep-alive
    connection (what HPACK exploits in HTTP/2); only the request line changes. A repeated
    block is compared, not parsed again: issue 6 measured field parsing at about 3 µs of
    the fast path's 30. A block that is new is most often the last one with one line
    changed (a request id, a trace header, a timestamp): its other lines are looked up,
    not parsed, and come with their upstream encoding (issue 15: parsing a new block costs
    about what it did, encoding its upstream fields 11.4 -> 6.4 µs). Making an llhttp
    parser costs about 1 µs more than feeding one (issue 15), and every head needs
    llhttp's judgement, new or not.
    """

    __slots__ = ("block", "headers", "judgement", "known", "lines", "lowered", "simple", "sink")

    def __init__(self) -> None:
        self.block = b""
        self.headers: CIMultiDict[str] | None = None
        self.lines: list[HeaderLine] | None = None
        self.simple = False
        self.known: dict[bytes, HeaderLine] = {}  # lines of the last new blocks, parsed
        # The last new block's names, lower case, and what they made of it: None, not
        # ours; else whether the request is simple.
        self.lowered: list[bytes] | None = None
        self.judgement: bool | None = None
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
    if block != memo.block:
        lines = _lines(block, limits, memo)
        memo.block, memo.lines = block, lines
        memo.headers, memo.simple = _judged(lines, memo) if lines is not None else (None, False)
    headers, simple, lines = memo.headers, memo.simple, memo.lines
    if headers is None:
        return None
    target = sink.url.decode("utf-8", "surrogateescape")
    if not target.startswith("/"):
        return None
    if is_reserved(target):
        if not is_verify(target):
            return None
        # A declared body is never read: answered, then the connection closes.
        return FastRequest(sink.method, target, headers, sink.keep_alive and simple, True, lines)
    if not simple:
        return None
    if "Upgrade" in headers and not is_websocket_upgrade(sink.method, headers):
        return None  # h2c and the like: aiohttp serves them with Upgrade dropped
    return FastRequest(sink.method, target, headers, sink.keep_alive, False, lines)


def _lines(block: bytes, limits: HeadLimits, memo: FieldMemo) -> list[HeaderLine] | None:
    """The header lines of a head llhttp accepted, each parsed once per connection (see
    FieldMemo); None when the request is not ours.

    Written with map and list.index rather than loops: on the machines issue 15 measured,
    a Python-level loop over a head's lines cost more than the parsing it saves.
    """
    raw = block[:-4].split(b"\r\n") if len(block) > 2 else []
    if len(raw) > limits.max_fields:
        return None
    known = memo.known
    lines = list(map(known.get, raw))
    if None not in lines:
        return lines  # type: ignore[return-value]  # (none is None)
    if len(known) > 2 * len(raw):  # two heads' worth at most, whatever the client sends
        known = memo.known = {
            line: found for line, found in zip(raw, lines, strict=True) if found is not None
        }
    at = lines.index(None)
    while True:
        line = raw[at]
        # llhttp refused bare CRs, obs-fold and whitespace before a colon: a line holding
        # no LF is exactly one of llhttp's fields. A line longer than a limit holds a name
        # or value near one: aiohttp's to judge.
        if b"\n" in line or len(line) > limits.max_field:
            return None
        lines[at] = known[line] = _parsed(line)
        if None not in lines:  # (a ValueError from index() costs more than this scan)
            return lines  # type: ignore[return-value]  # (every None filled in)
        at = lines.index(None, at + 1)


def _parsed(line: bytes) -> HeaderLine:
    # As aiohttp takes them: values without surrounding whitespace (RFC 9110 §5.5); names
    # latin-1 (llhttp let only token characters through), values UTF-8 keeping any stray
    # byte, so that the upstream line below is what encode_fields makes of the pair.
    name, _, value = line.partition(b":")
    value = value.strip(b" \t")
    # tuple.__new__: a NamedTuple's own __new__ is Python code, 0.5 µs more per line.
    return _new_tuple(
        HeaderLine,
        (
            name.decode("latin-1"),
            value.decode("utf-8", "surrogateescape"),
            name.lower(),
            name + b": " + value + b"\r\n",
        ),
    )


def _judged(lines: list[HeaderLine], memo: FieldMemo) -> tuple[CIMultiDict[str] | None, bool]:
    """The fields of a block (None when the request is not ours), and whether the request
    is simple: no body and no Expect declared. What is judged are the names, which a
    block that is new most often shares with the last one."""
    lowered = list(map(_LOWERED, lines))
    if lowered != memo.lowered:
        names = set(lowered)
        memo.lowered = lowered
        memo.judgement = (
            None
            if b"host" not in names
            or (len(names) != len(lowered) and _repeats_a_singleton(lowered))
            else names.isdisjoint(_NOT_SIMPLE)
        )
    simple = memo.judgement
    if simple is None:
        return None, False
    return CIMultiDict(list(map(_NAME_AND_VALUE, lines))), simple


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
