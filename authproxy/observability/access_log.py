"""The access log: one JSON line per request, at the rate requests come.

Lines are rendered by hand (the fields are few and known) and written in batches, as
nginx's ``access_log ... buffer=64k flush=1s`` does: a batch goes out once
``logging.access_buffer_bytes`` have gathered or ``logging.access_flush_interval`` has
passed, whichever is first, and at shutdown. A thread does the writing, so a slow or
stalled stderr never blocks the event loop; when more than ``_MAX_QUEUED_BATCHES`` batches
wait for it, new lines are dropped and counted (``authproxy_access_log_dropped_lines``)
instead: proxying comes first.

The line has the fields and names structlog gave it before (issue 15): status,
duration_ms, remote, event, request_id, method, path, space_id and key_id when a key was
accepted, level and timestamp; strings pass through the same secret redaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Final, Protocol

from authproxy.observability.logs import redact_text

# Writes of at most PIPE_BUF bytes to a pipe are atomic: to a pipe, a batch goes out in
# pieces of whole lines no larger, so other log lines on it never land inside one. A
# file or terminal takes the whole batch in one write (writes to one file are atomic).
_PIPE_BUF: Final = 4096
# Batches waiting for the writer before new lines are dropped (64 KiB each by default).
_MAX_QUEUED_BATCHES: Final = 16


class Dropped(Protocol):
    def inc(self, amount: float = 1) -> None: ...


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
        self._lines: list[bytes] = []
        self._size = 0
        self._queue: deque[list[bytes]] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._writer: threading.Thread | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._second = -1
        self._second_text = ""
        self._piece_limit = _PIPE_BUF  # set by start() from what the fd is

    # -- the hot path
    def write(
        self,
        *,
        status: int,
        duration_ms: float,
        remote: str,
        request_id: str,
        method: str,
        path: str,
        space_id: str | None,
        key_id: str | None,
    ) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        who = (
            ""
            if space_id is None
            else f', "space_id": {_text(space_id)}, "key_id": {_text(key_id or "")}'
        )
        line = (
            f'{{"status": {status}, "duration_ms": {duration_ms!r}, "remote": {_text(remote)}, '
            f'"event": "request", "request_id": {_text(request_id)}, "method": {_text(method)}, '
            f'"path": {_text(path)}{who}, "level": "info", "timestamp": '
            f'"{self._second_text}.{int((now - second) * 1e6):06d}Z"}}\n'
        ).encode("utf-8", "surrogateescape")
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._buffer_bytes:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the gathered lines to the writer thread, or drop them if it is behind."""
        lines, self._lines, self._size = self._lines, [], 0
        if not lines:
            return
        with self._wake:
            if len(self._queue) >= _MAX_QUEUED_BATCHES:
                self._dropped.inc(len(lines))
                return
            self._queue.append(lines)
            self._wake.notify()

    # -- lifetime
    def start(self) -> None:
        """Start the writer thread and the periodic flush (needs the running loop)."""
        try:
            self._piece_limit = _PIPE_BUF if stat.S_ISFIFO(os.fstat(self._fd).st_mode) else 0
        except OSError:
            self._piece_limit = _PIPE_BUF
        self._writer = threading.Thread(target=self._write_batches, name="access-log", daemon=True)
        self._writer.start()
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
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join, timeout)
            with self._wake:
                for lines in self._queue:
                    self._dropped.inc(len(lines))
                self._queue.clear()

    # -- the writer thread
    def _write_batches(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if not self._queue:
                    return
                lines = self._queue.popleft()
            self._write(lines)

    def _write(self, lines: list[bytes]) -> None:
        if not self._piece_limit:
            if not self._write_all(b"".join(lines)):
                self._dropped.inc(len(lines))
            return
        piece: list[bytes] = []
        size = 0
        for index, line in enumerate(lines):
            if piece and size + len(line) > self._piece_limit:
                if not self._write_all(b"".join(piece)):
                    self._dropped.inc(len(lines) - index + len(piece))
                    return
                piece, size = [], 0
            piece.append(line)
            size += len(line)
        if piece and not self._write_all(b"".join(piece)):
            self._dropped.inc(len(piece))

    def _write_all(self, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except InterruptedError:
                continue
            except OSError:
                return False  # stderr closed (EPIPE, EBADF): nowhere to write
            view = view[written:]
        return True


def _text(value: str) -> str:
    """A JSON string, redacted as structlog's processor redacts; most values need neither
    escaping nor redaction, and are checked for both in one pass each."""
    value = redact_text(value)
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)
