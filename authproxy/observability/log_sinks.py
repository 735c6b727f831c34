"""Where the access log's batches go, chosen once from what the log's fd is.

What a write costs depends on what is behind the fd, so each kind gets its own sink:

- A regular file (``serve 2>>access.log``, the benchmark's lab): a write lands in the page
  cache, so the batch is written at once from the event loop, as nginx writes its access
  log. No thread: waking one per batch cost more (handing the GIL over on a busy 2-core
  machine) than the write itself.
- A pipe or terminal (a container runtime, systemd, a log shipper): the fd is reopened
  through ``/proc/self/fd`` as a description of our own and made non-blocking, so the
  loop writes without ever blocking, and without changing the flags of the stdout/stderr
  every other writer shares. A full pipe leaves the rest queued until the loop sees the
  pipe writable again; past the queue's bound, new lines are dropped and counted.
- Anything else (a socket, or a pipe that cannot be reopened): a writer thread, so a
  stalled reader still never blocks the loop; the same bound and count.

Every sink writes whole lines: to a pipe in pieces of at most ``PIPE_BUF`` bytes, which
the kernel writes atomically, so other log lines on the same pipe never land inside one.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections import deque
from typing import Final, Protocol

# Writes of at most PIPE_BUF bytes to a pipe are atomic (POSIX; 4096 on Linux).
PIPE_BUF: Final = 4096


class Dropped(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Sink(Protocol):
    def write(self, data: bytes, lines: int) -> None:
        """Take a batch of ``lines`` whole lines; never blocks the event loop for long."""

    async def close(self, timeout: float) -> None:
        """Write what is queued, waiting up to ``timeout`` s; count the rest as dropped."""


def open_sink(fd: int, *, dropped: Dropped, max_queued_bytes: int) -> Sink:
    """The sink for ``fd`` (see the module docstring). Needs the running loop."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        mode = 0
    if stat.S_ISREG(mode):
        return FileSink(fd, dropped)
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        try:
            own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            pass  # no /proc, or a FIFO with no reader (ENXIO): the thread copes
        else:
            return NonBlockingSink(own, dropped, max_queued_bytes, PIPE_BUF)
    return ThreadSink(fd, dropped, max_queued_bytes, PIPE_BUF if stat.S_ISFIFO(mode) else 1 << 62)


def pieces(data: bytes, limit: int) -> list[bytes]:
    """``data`` (whole lines) cut after a newline into pieces of at most ``limit`` bytes;
    a line longer than ``limit`` is a piece of its own."""
    if len(data) <= limit:
        return [data]
    out: list[bytes] = []
    start = 0
    while len(data) - start > limit:
        cut = data.rfind(b"\n", start, start + limit) + 1
        if cut <= start:  # one line longer than the limit
            cut = data.index(b"\n", start) + 1
        out.append(data[start:cut])
        start = cut
    if start < len(data):
        out.append(data[start:])
    return out


class FileSink:
    """A regular file: one write per batch, from the loop (the page cache takes it)."""

    def __init__(self, fd: int, dropped: Dropped) -> None:
        self._fd = fd
        self._dropped = dropped

    def write(self, data: bytes, lines: int) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except InterruptedError:
                continue
            except OSError:  # disk full, fd closed: nowhere to write this batch
                self._dropped.inc(lines)
                return

    async def close(self, timeout: float) -> None:
        return None


class NonBlockingSink:
    """A pipe or terminal through a non-blocking description of our own: the loop writes
    until the pipe is full, then waits for it to drain (``loop.add_writer``)."""

    def __init__(self, fd: int, dropped: Dropped, max_queued_bytes: int, piece: int) -> None:
        self._fd = fd
        self._dropped = dropped
        self._max_queued = max_queued_bytes
        self._piece = piece
        self._queue: deque[bytes] = deque()  # pieces of whole lines, oldest first
        self._queued = 0
        self._waiting = False
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes, lines: int) -> None:
        if self._queued + len(data) > self._max_queued:
            self._dropped.inc(lines)  # the reader is behind: proxying comes first
            return
        self._queue.extend(pieces(data, self._piece))
        self._queued += len(data)
        if not self._waiting:
            self._write_queued()

    def _write_queued(self) -> None:
        queue = self._queue
        while queue:
            data = queue[0]
            try:
                written = os.write(self._fd, data)
            except InterruptedError:
                continue
            except BlockingIOError:
                if not self._waiting:
                    self._loop.add_writer(self._fd, self._write_queued)
                    self._waiting = True
                return
            except OSError:  # the reader is gone (EPIPE): nowhere to write
                self._drop_queued()
                break
            self._queued -= written
            if written == len(data):
                queue.popleft()
            else:  # a terminal, or one line longer than PIPE_BUF: the rest next time
                queue[0] = data[written:]
        if self._waiting:
            self._loop.remove_writer(self._fd)
            self._waiting = False

    def _drop_queued(self) -> None:
        # A piece cut short counts as a lost line: its end never reached the reader.
        self._dropped.inc(sum(data.count(b"\n") for data in self._queue))
        self._queue.clear()
        self._queued = 0

    async def close(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # add_writer keeps writing as the reader drains
        if self._waiting:
            self._loop.remove_writer(self._fd)
            self._waiting = False
        self._drop_queued()
        os.close(self._fd)


class ThreadSink:
    """Anything else (a socket): a thread does the blocking writes, so a stalled reader
    stops only the thread."""

    def __init__(self, fd: int, dropped: Dropped, max_queued_bytes: int, piece: int) -> None:
        self._fd = fd
        self._dropped = dropped
        self._max_queued = max_queued_bytes
        self._piece = piece
        self._queue: deque[tuple[bytes, int]] = deque()  # (data, lines in it)
        self._queued = 0
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def write(self, data: bytes, lines: int) -> None:
        with self._wake:
            if self._queued + len(data) > self._max_queued:
                self._dropped.inc(lines)
                return
            self._queue.append((data, lines))
            self._queued += len(data)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if not self._queue:
                    return
                data, _ = self._queue.popleft()
                self._queued -= len(data)
            self._write(data)

    def _write(self, data: bytes) -> None:
        batch = pieces(data, self._piece)
        for index, piece in enumerate(batch):
            view = memoryview(piece)
            while view:
                try:
                    view = view[os.write(self._fd, view) :]
                except InterruptedError:
                    continue
                except OSError:  # the reader is gone: nowhere to write
                    self._dropped.inc(sum(p.count(b"\n") for p in batch[index:]))
                    return

    async def close(self, timeout: float) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout)
        with self._wake:
            for _, lines in self._queue:
                self._dropped.inc(lines)
            self._queue.clear()
            self._queued = 0
