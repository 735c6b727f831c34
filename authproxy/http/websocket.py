"""WebSocket rules of this hop (RFC 6455): which upgrades pass, and close frames. Pure.

A tunnel relays bytes, not messages, so the proxy never parses a payload. It only keeps
track of where frames begin (``FrameBoundary``): a close frame of our own (1008 when a
key is revoked, 1001 at shutdown) must go between two frames, never inside one.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from typing import Final

from multidict import MultiMapping

from authproxy.http.headers import X_REQUEST_ID, client_response_headers, connection_tokens

WEBSOCKET: Final = "websocket"
# RFC 6455 §7.4.1
GOING_AWAY: Final = 1001
POLICY_VIOLATION: Final = 1008

_OPCODE_CLOSE: Final = 0x8
_FIN: Final = 0x80
_MASKED: Final = 0x80


def upgrade_tokens(headers: MultiMapping[str]) -> set[str]:
    """The protocols a request asks to upgrade to (RFC 9110 §7.8), lower-cased, names
    only (``websocket``, ``h2c``); empty when Connection does not list ``upgrade``."""
    if "upgrade" not in connection_tokens(headers.getall("Connection", [])):
        return set()
    return {
        token.strip().split("/", 1)[0].lower()
        for value in headers.getall("Upgrade", [])
        for token in value.split(",")
        if token.strip()
    }


def is_websocket_upgrade(method: str, headers: MultiMapping[str]) -> bool:
    """A WebSocket opening handshake (RFC 6455 §4.1): GET, Connection: upgrade, and
    Upgrade: websocket as the one protocol asked for. Anything else with Upgrade is served
    as a plain request with Upgrade dropped, as nginx does without an upgrade map."""
    return method == "GET" and upgrade_tokens(headers) == {WEBSOCKET}


# Added to the upgrade request once hop-by-hop fields are gone (RFC 9110 §7.6.1 and §7.8):
# the one upgrade this hop forwards.
UPGRADE_FIELDS: Final = (("Connection", "Upgrade"), ("Upgrade", "websocket"))


def switching_head(
    reason: str, upstream: Iterable[tuple[bytes, bytes]], extra: Mapping[str, str], request_id: str
) -> bytes:
    """The 101 head for the client, the same from both front ends: the upstream's fields
    minus hop-by-hop ones (Sec-WebSocket-Accept, -Protocol and -Extensions pass), our
    Upgrade and Connection, then ``extra`` and X-Request-Id."""
    ours = {name.lower() for name in extra} | {X_REQUEST_ID.lower()}
    fields = client_response_headers(
        [(name.decode("latin-1"), value.decode("latin-1")) for name, value in upstream]
    )
    lines = [f"HTTP/1.1 101 {reason or 'Switching Protocols'}"]
    lines += [f"{name}: {value}" for name, value in UPGRADE_FIELDS]
    lines += [f"{name}: {value}" for name, value in fields if name.lower() not in ours]
    lines += [f"{name}: {value}" for name, value in extra.items()]
    lines += [f"{X_REQUEST_ID}: {request_id}", "", ""]
    return "\r\n".join(lines).encode("latin-1", "replace")


def close_frame(code: int, reason: str, *, masked: bool) -> bytes:
    """One close frame; ``masked`` for frames a client sends (to the upstream), unmasked
    for the server's (to the client), RFC 6455 §5.1. The reason is cut to fit 125 bytes."""
    payload = struct.pack("!H", code) + reason.encode("utf-8")[:123]
    head = bytes((_FIN | _OPCODE_CLOSE,))
    if not masked:
        return head + bytes((len(payload),)) + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + bytes((_MASKED | len(payload),)) + key + body


class FrameBoundary:
    """Follows one direction of a WebSocket byte stream from frame header to frame header,
    so a frame of our own can be put between two frames. Reads only the 2-14 header bytes
    of each frame; payloads are skipped by their length."""

    __slots__ = ("_header", "_left")

    def __init__(self) -> None:
        self._left = 0  # payload bytes of the current frame still to come
        self._header = b""  # the start of a header split across reads

    @property
    def at_boundary(self) -> bool:
        return self._left == 0 and not self._header

    def feed(self, data: bytes) -> None:
        """Account for ``data``, the next bytes of the stream."""
        self.until_boundary(data, consume=True)

    def until_boundary(self, data: bytes, *, consume: bool = False) -> int | None:
        """How many bytes of ``data`` end the frame in progress (0: none is); None when
        the frame goes on past ``data``. With ``consume``, the stream moves past ``data``."""
        left, header = self._left, self._header
        at = 0
        end = len(data)
        first: int | None = 0 if left == 0 and not header else None
        while at < end:
            if left:
                step = min(left, end - at)
                left -= step
                at += step
                if left == 0 and first is None:
                    first = at
                continue
            combined = header + data[at : at + 14 - len(header)]
            size = _header_size(combined)
            if size is None or len(combined) < size:
                header, at = combined, end  # the rest of the header comes in a later read
                break
            at += size - len(header)
            left, header = _payload_length(combined), b""
            if left == 0 and first is None:
                first = at
        if consume:
            self._left, self._header = left, header
        return first


def _header_size(header: bytes) -> int | None:
    """The size of a frame header from its first bytes, or None until two are known."""
    if len(header) < 2:
        return None
    length = header[1] & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return size + (4 if header[1] & _MASKED else 0)


def _payload_length(header: bytes) -> int:
    length = header[1] & 0x7F
    if length == 126:
        return int(struct.unpack_from("!H", header, 2)[0])
    if length == 127:
        return int(struct.unpack_from("!Q", header, 2)[0])
    return length
