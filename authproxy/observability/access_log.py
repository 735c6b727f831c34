"""The access log: one JSON line per request, at the rate requests come.

Lines are rendered by hand (the fields are few and known) and written in batches, as
nginx's ``access_log ... buffer=64k flush=1s`` does: a batch goes out once
``logging.access_buffer_bytes`` have gathered or ``logging.access_flush_interval`` has
passed, whichever is first, and at shutdown. Where a batch goes, and how it is written
without ever blocking the event loop, depends on what stderr is (observability/
log_sinks.py); when more than ``_MAX_QUEUED_BATCHES`` batches wait for a slow reader, new
lines are dropped and counted (``authproxy_access_log_dropped_lines``) instead: proxying
comes first.

The line has the fields and names structlog gave it before (issue 15): status,
duration_ms, remote, event, request_id, method, path, space_id and key_id when a key was
accepted, level and timestamp; strings pass through the same secret redaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime
from typing import Final

from authproxy.observability.log_sinks import Dropped, Sink, open_sink
from authproxy.observability.logs import redact_text

# Batches (logging.access_buffer_bytes each, 64 KiB by default) that may wait for a slow
# reader before new lines are dropped.
_MAX_QUEUED_BATCHES: Final = 16
# What repeats from line to line: remote, method, path, space id, key id, and
# forward-auth's (method, URI) of the request a gateway asked about.
_Repeating = tuple[str, str, str, str | None, str | None, tuple[str, str] | None]
# One line, around the fields that repeat (_render_same); one %-format, the cheapest
# way to join them measured (issue 15). %06d truncates the float of microseconds.
_LINE: Final = (
    '{"status": %d, "duration_ms": %.3f, "request_id": "%s", %s"timestamp": "%s.%06dZ"}\n'
)
# A request noted for its line: status, duration, request id, what repeats, time.time().
_Noted = tuple[int, float, str, _Repeating, float]
# Requests noted before their lines are rendered, in one loop: rendered one by one
# between requests, a line cost twice what it costs in that loop, its code and data
# cold each time (issue 15). A line's time is taken when it is noted.
_RENDER_EVERY: Final = 64
# Rendered _Repeating tuples remembered (see _render_same).
_REMEMBERED: Final = 4096


class AccessLog:
    """Renders, batches and writes access lines (see the module docstring)."""

    def __init__(
        self,
        *,
        dropped: Dropped,
        fd: int = 2,
        buffer_bytes: int = 65536,
        flush_interval: float = 1.0,
    ) -> None:
        self._fd = fd
        self._buffer_bytes = buffer_bytes
        self._flush_interval = flush_interval
        self._dropped = dropped
        self._noted: list[_Noted] = []
        self._lines: list[str] = []
        self._same: dict[_Repeating, str] = {}
        self._size = 0
        self._sink: Sink | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._second = -1
        self._second_text = ""

    # -- the hot path
    def write(
        self,
        status: int,
        duration: float,
        remote: str,
        request_id: str,
        method: str,
        path: str,
        space_id: str | None,
        key_id: str | None,
        original: tuple[str, str] | None = None,
    ) -> None:
        """One line; ``duration`` in seconds; ``original``: forward-auth's (method, URI)
        of the request a gateway asked about. Positional: this runs once per request.

        Noted here, rendered with the next _RENDER_EVERY (see there)."""
        noted = self._noted
        noted.append(
            (
                status,
                duration,
                request_id,
                (remote, method, path, space_id, key_id, original),
                time.time(),
            )
        )
        if len(noted) >= _RENDER_EVERY:
            self._render()
            if self._size >= self._buffer_bytes:
                self._hand_over()

    def _render(self) -> None:
        """The lines of the requests noted so far, joined to the batch."""
        noted, self._noted = self._noted, []
        same_of, lines, size = self._same, self._lines, self._size
        for status, duration, request_id, fields, now in noted:
            second = int(now)
            if second != self._second:
                self._second = second
                self._second_text = datetime.fromtimestamp(second, UTC).strftime(
                    "%Y-%m-%dT%H:%M:%S"
                )
            same = same_of.get(fields) or self._render_same(fields)
            # Request ids are [A-Za-z0-9._:-] by construction (http/headers.py): nothing
            # to escape. A client could still send a key or a JWT as one, and each secret
            # pattern redact_text knows needs "_" or "." in that alphabet (a key's "asc_",
            # a JWT's dots); ids without either, ours among them, skip its search (0.6 µs).
            if "_" in request_id or "." in request_id:
                request_id = redact_text(request_id)
            line = _LINE % (
                status,
                duration * 1000,
                request_id,
                same,
                self._second_text,
                (now - second) * 1e6,
            )
            lines.append(line)
            size += len(line)  # the line is ASCII: _text escapes everything else
        self._size = size

    def _render_same(self, fields: _Repeating) -> str:
        """The fields that repeat, rendered once and remembered: an integration asks for
        the same few paths with the same key from the same address, request after
        request. All are forgotten when _REMEMBERED have gathered (a scan of random
        paths costs memory only up to there)."""
        remote, method, path, space_id, key_id, original = fields
        who = (
            ""
            if space_id is None
            else f', "space_id": {_text(space_id)}, "key_id": {_text(key_id or "")}'
        )
        same = (
            f'"remote": {_text(remote)}, "event": "request", "method": {_text(method)}, '
            f'"path": {_text(path)}{who}, "level": "info", '
            f"{'' if original is None else _original(original)}"
        )
        if len(self._same) >= _REMEMBERED:
            self._same.clear()
        self._same[fields] = same
        return same

    def _hand_over(self) -> None:
        """Give the gathered lines to the sink, as one block of bytes."""
        if self._noted:
            self._render()
        lines, self._lines, self._size = self._lines, [], 0
        if not lines:
            return
        if self._sink is None:  # not started, or closed: nowhere to write
            self._dropped.inc(len(lines))
            return
        self._sink.write("".join(lines).encode("ascii"), len(lines))

    # -- lifetime
    def start(self) -> None:
        """Open the sink and start the periodic flush (needs the running loop)."""
        self._sink = open_sink(
            self._fd,
            dropped=self._dropped,
            max_queued_bytes=_MAX_QUEUED_BATCHES * max(self._buffer_bytes, 4096),
        )
        self._flusher = asyncio.get_running_loop().create_task(self._flush_periodically())

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            self._hand_over()

    async def close(self, timeout: float = 5.0) -> None:
        """Write every line gathered so far, waiting up to ``timeout`` seconds for a slow
        stderr; what is still unwritten then is counted as dropped."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self._hand_over()
        sink, self._sink = self._sink, None
        if sink is not None:
            await sink.close(timeout)


def _original(original: tuple[str, str]) -> str:
    method, uri = original
    return f'"original_method": {_text(method)}, "original_uri": {_text(uri)}, '


def _text(value: str) -> str:
    """A JSON string in ASCII, redacted as structlog's processor redacts; most values need
    neither escaping nor redaction, and are checked for both in one pass each."""
    value = redact_text(value)
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)
