"""The head of an answer on the fast path, framed byte for byte as aiohttp frames it.

exchange.py writes these straight to the client: the upstream's header fields copied as
bytes, minus hop-by-hop ones (headers.py's rule), plus ours (X-Request-Id, RateLimit-*),
with aiohttp's defaults for what is missing (Date, Server, Content-Type) and its framing
(Content-Length as given, else chunked).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from aiohttp.helpers import must_be_empty_body, rfc822_formatted_time, should_remove_content_length
from aiohttp.http import SERVER_SOFTWARE

from authproxy.http.headers import HOP_BY_HOP, client_response_headers, connection_tokens


def framed(data: bytes, chunked: bool, *, last: bool) -> bytes:
    if not chunked:
        return data
    framed = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
    return framed + b"0\r\n\r\n" if last else framed


# Upstream response header names response_head treats specially, by lower-cased name.
_DROP, _CONNECTION, _LENGTH, _TYPE, _DATE, _SERVER = range(6)
_SPECIAL: Final = {
    **dict.fromkeys((n.encode() for n in HOP_BY_HOP - {"connection"}), _DROP),
    b"connection": _CONNECTION,
    b"x-request-id": _DROP,
    b"content-length": _LENGTH,
    b"content-type": _TYPE,
    b"date": _DATE,
    b"server": _SERVER,
}
_SERVER_LINE: Final = f"Server: {SERVER_SOFTWARE}".encode()
RawFields = Iterable[tuple[bytes, bytes]]  # as received: names and values in bytes


# (method, status, reason, keep_alive, upstream fields) -> _Parts, for answers without
# extra fields (the default: no key rate limit). An upstream answers the same header
# fields again and again, its Date changing once a second; the head is then joined, not
# built (the loop below was 5% of a proxied request's samples, issue 15). Bounded.
_Parts = tuple[bytes, bytes, bool, bytes, bool]
_remembered: dict[tuple[object, ...], _Parts] = {}
_REMEMBERED: Final = 256


def response_head(
    method: str,
    status: int,
    reason: str,
    upstream: RawFields,
    extra: Mapping[str, str],
    request_id: str,
    keep_alive: bool,
) -> tuple[bytes, bool]:
    """Status line and headers, framed as aiohttp frames them; and whether chunked."""
    if extra:
        parts = _parts(method, status, reason, upstream, extra, keep_alive)
    else:
        fields = tuple(upstream)
        key = (method, status, reason, keep_alive, fields)
        remembered = _remembered.get(key)
        if remembered is None:
            if len(_remembered) >= _REMEMBERED:
                _remembered.clear()
            remembered = _remembered[key] = _parts(method, status, reason, fields, {}, keep_alive)
        parts = remembered
    before, middle, dated, end, chunked = parts
    rid = request_id.encode("ascii")
    if dated:
        return b"%sX-Request-Id: %s%s%s" % (before, rid, middle, end), chunked
    # Our own Date, never remembered: a second later it is wrong.
    date = rfc822_formatted_time().encode("ascii")
    return b"%sX-Request-Id: %s%s\r\nDate: %s%s" % (before, rid, middle, date, end), chunked


def _parts(
    method: str,
    status: int,
    reason: str,
    upstream: RawFields,
    extra: Mapping[str, str],
    keep_alive: bool,
) -> _Parts:
    """The head around its X-Request-Id value, split where our Date goes when the
    upstream sent none: (before, middle, upstream sent a Date, end, chunked).

    One pass over the upstream's header fields, as bytes (they are copied, not decoded),
    drops hop-by-hop ones (headers.py's rule) and notes the framing ones.
    """
    empty = must_be_empty_body(method, status)
    overridden = {name.lower().encode("latin-1") for name in extra} if extra else None
    # As the whole head was encoded before: UTF-8 keeping stray bytes (aiohttp decodes a
    # reason that way, h1connection as latin-1; either way no answer fails on it).
    lines = [b"HTTP/1.1 %d %s" % (status, reason.encode("utf-8", "surrogateescape"))]
    length: bytes | None = None
    has_type = has_date = has_server = False
    for name, value in upstream:
        lower = name.lower()
        kind = _SPECIAL.get(lower)
        if kind is not None:
            if kind == _DROP:
                continue
            if kind == _CONNECTION:
                if connection_tokens([value.decode("latin-1")]) - HOP_BY_HOP - {"close"}:
                    # Rare: the upstream's Connection header names more headers to drop.
                    return _parts(
                        method, status, reason, _without_listed(upstream), extra, keep_alive
                    )
                continue
            if kind == _LENGTH:
                if empty and should_remove_content_length(method, status):
                    continue
                length = value.strip()
            elif kind == _TYPE:
                has_type = True
            elif kind == _DATE:
                has_date = True
            else:
                has_server = True
        if overridden is not None and lower in overridden:
            continue
        lines.append(name + b": " + value)
    if extra:
        lines.extend(f"{name}: {value}".encode("latin-1") for name, value in extra.items())
    lines.append(b"X-Request-Id: ")
    before = b"\r\n".join(lines)
    middle: list[bytes] = []
    chunked = not empty and length is None
    if chunked:
        middle.append(b"Transfer-Encoding: chunked")
    if not empty and length != b"0" and not has_type:
        middle.append(b"Content-Type: application/octet-stream")
    end: list[bytes] = []
    if not has_server:
        end.append(_SERVER_LINE)
    if not keep_alive:
        end.append(b"Connection: close")
    end.append(b"\r\n")
    return (
        before[: -len(b"X-Request-Id: ")],
        b"".join(b"\r\n" + line for line in middle),
        has_date,
        b"".join(b"\r\n" + line for line in end),
        chunked,
    )


def _without_listed(fields: RawFields) -> list[tuple[bytes, bytes]]:
    """headers.client_response_headers on raw fields (latin-1 keeps every byte)."""
    kept = client_response_headers([(n.decode("latin-1"), v.decode("latin-1")) for n, v in fields])
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in kept]
