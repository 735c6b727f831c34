"""Batch key uses in memory and write last_used_at in one statement per interval."""

from __future__ import annotations

import time
from datetime import datetime

import structlog

from authproxy.errors import StoreUnavailable
from authproxy.metrics import Metrics
from authproxy.store import Store

log = structlog.get_logger(__name__)


class UsageRecorder:
    """Remembers the latest use of each key; ``flush`` writes them all at once.

    A write per request would make PostgreSQL the bottleneck of the proxy; the product
    only promises "last used" to the minute, so batching loses nothing users can see.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._pending: dict[str, datetime] = {}
        self._metrics = metrics
        self._oldest: float | None = None  # monotonic time of the oldest pending use

    def __len__(self) -> int:
        return len(self._pending)

    def record(self, key_id: str, used_at: datetime) -> None:
        previous = self._pending.get(key_id)
        if previous is None or used_at > previous:
            self._pending[key_id] = used_at
        if self._oldest is None:
            self._oldest = time.monotonic()

    async def flush(self, store: Store) -> int:
        """Write pending uses; on failure keep them for the next flush. Returns rows sent."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        oldest, self._oldest = self._oldest, None
        try:
            await store.record_usage(list(batch.items()))
        except StoreUnavailable as exc:
            for key_id, used_at in batch.items():
                self.record(key_id, used_at)
            self._oldest = oldest
            self._metrics.last_used_flush_failures.inc()
            log.warning("last_used_flush_failed", pending=len(self._pending), error=str(exc))
            return 0
        self._metrics.last_used_flush_keys.observe(len(batch))
        if oldest is not None:
            self._metrics.last_used_flush_lag.observe(time.monotonic() - oldest)
        log.debug("last_used_flushed", keys=len(batch))
        return len(batch)
