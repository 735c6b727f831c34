"""Parse one request head for the fast front end, or say it is aiohttp's to serve.

``parse_head`` gets exactly the bytes up to and including the blank line. It returns a
FastRequest only for the plainest of requests: HTTP/1.1, origin-form target outside
/_authproxy/, a Host header, no body (no Content-Length other than 0, no
Transfer-Encoding), no Expect or Upgrade, and every size comfortably below aiohttp's
limits. Anything else, invalid heads included, returns None: the caller hands the bytes
to aiohttp, whose parser (the same llhttp) and error answers then decide.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import httptools
from aiohttp.http_parser import SINGLETON_HEADERS
from multidict import CIMultiDict

from authproxy.app import is_reserved

# Headers that make a request something other than a bodiless one, or ask for a reply
# we leave to aiohttp.
_NOT_SIMPLE: Final = frozenset({b"content-length", b"transfer-encoding", b"expect",
                                b"upgrade"})
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
        return cls(max_url_bytes - _LIMIT_MARGIN, max_header_bytes - _LIMIT_MARGIN,
                   max_headers - 1)


class FastRequest:
    """A parsed bodiless request: what fastproxy needs, nothing more."""

    __slots__ = ("headers", "keep_alive", "method", "target")

    def __init__(self, method: str, target: str, headers: CIMultiDict[str],
                 keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.keep_alive = keep_alive


def parse_head(head: bytes, limits: HeadLimits) -> FastRequest | None:
    """The request in ``head``, or None when it is not ours to serve."""
    sink = _Head(limits)
    try:
        sink.parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None  # invalid heads; upgrades and CONNECT (not an HttpParserError)
    if not (sink.complete and sink.simple) or sink.version != "1.1":
        return None
    target = sink.url.decode("utf-8", "surrogateescape")
    headers = CIMultiDict(sink.fields)
    if not target.startswith("/") or is_reserved(target) or "Host" not in headers:
        return None
    return FastRequest(sink.method, target, headers, sink.keep_alive)


class _Head:
    """httptools callbacks for one request head; ``simple`` turns False on anything odd."""

    __slots__ = ("complete", "fields", "keep_alive", "limits", "method", "parser", "seen",
                 "simple", "url", "version")

    def __init__(self, limits: HeadLimits) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.limits = limits
        self.method = self.version = ""
        self.keep_alive = False
        self.url = b""
        self.fields: list[tuple[str, str]] = []
        self.simple = True
        self.complete = False
        self.seen: set[bytes] = set()

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_url:
            self.simple = False

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.limits
        lower = name.lower()
        if (len(name) > limits.max_field or len(value) > limits.max_field
                or len(self.fields) >= limits.max_fields or lower in _NOT_SIMPLE):
            self.simple = False
        if lower in _SINGLETONS:
            if lower in self.seen:
                self.simple = False
            self.seen.add(lower)
        # As aiohttp takes them: llhttp leaves trailing whitespace on a value, aiohttp strips
        # it (RFC 9110 §5.5); names latin-1, values UTF-8 keeping any stray byte.
        self.fields.append((name.decode("latin-1"),
                            value.rstrip(b" \t").decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        # Read here: llhttp forgets them once the message is complete.
        parser = self.parser
        self.method = parser.get_method().decode("ascii")
        self.version = parser.get_http_version()
        self.keep_alive = parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self.complete = True
