"""Batch key uses in memory and write last_used_at in one statement per interval."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import datetime

import structlog

from authproxy.errors import StoreUnavailable
from authproxy.keys.store import Store
from authproxy.observability.metrics import Metrics

log = structlog.get_logger(__name__)


class UsageRecorder:
    """Remembers the latest use of each key; ``flush`` writes them all at once.

    A write per request would make PostgreSQL the bottleneck of the proxy; the product
    only promises "last used" to the minute, so batching loses nothing users can see.

    Once ``max_pending`` keys wait, the next flush is due at once (``due``): with 100,000
    keys in use, a 10 s interval held them all, about 190 bytes each, and the flush built
    a batch of them all at once (issue 6 measured the daemon at 130 MiB after using every
    one of 100,000 cached keys). The trade: with more distinct keys than max_pending in
    use per interval, repeat uses merge less, so keys are written more often (at most
    once per use, still in batches). While flushes fail, only the interval applies.
    """

    def __init__(self, metrics: Metrics, *, max_pending: int = 10_000) -> None:
        self._pending: dict[str, datetime] = {}
        self._metrics = metrics
        self._max_pending = max_pending
        self._oldest: float | None = None  # monotonic time of the oldest pending use
        self._full = asyncio.Event()
        self._failing = False  # the last flush failed: wait for the interval, not _full

    def __len__(self) -> int:
        return len(self._pending)

    def record(self, key_id: str, used_at: datetime) -> None:
        previous = self._pending.get(key_id)
        if previous is None:
            self._pending[key_id] = used_at
            if self._is_full():
                self._full.set()
        elif used_at > previous:
            self._pending[key_id] = used_at
        if self._oldest is None:
            self._oldest = time.monotonic()

    async def due(self, interval: float) -> None:
        """Return after ``interval`` seconds, or as soon as max_pending keys wait."""
        if self._is_full():
            return  # they filled up again while the last flush was being written
        self._full.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._full.wait(), interval)

    def _is_full(self) -> bool:
        """max_pending keys wait, and flushes are not failing (then the interval rules)."""
        return len(self._pending) >= self._max_pending and not self._failing

    async def flush(self, store: Store) -> int:
        """Write pending uses; on failure keep them for the next flush. Returns rows sent."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        oldest, self._oldest = self._oldest, None
        try:
            await store.record_usage(batch.items())
        except StoreUnavailable as exc:
            self._failing = True
            self._keep(batch, oldest)
            self._metrics.last_used_flush_failures.inc()
            log.warning("last_used_flush_failed", pending=len(self._pending), error=str(exc))
            return 0
        except BaseException:
            # Shutdown cancelled a periodic flush mid-write (the final flush writes these),
            # or something unforeseen failed (the housekeeping loop logs it): nothing is
            # lost, and the next try waits for the interval.
            self._failing = True
            self._keep(batch, oldest)
            raise
        self._failing = False
        self._metrics.last_used_flush_keys.observe(len(batch))
        if oldest is not None:
            self._metrics.last_used_flush_lag.observe(time.monotonic() - oldest)
        log.debug("last_used_flushed", keys=len(batch))
        return len(batch)

    def _keep(self, batch: dict[str, datetime], oldest: float | None) -> None:
        """Put back a batch that was not written (rows already written are written again:
        the update only moves forward)."""
        for key_id, used_at in batch.items():
            self.record(key_id, used_at)
        self._oldest = oldest
