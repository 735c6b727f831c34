"""Keys nobody uses: the key list's ``unused_for`` filter, and the gauge of them.

A key is unused for D when it is active (neither revoked nor expired) and its last use,
or its creation if it was never used, is more than D ago. last_used_at is written in
batches (usage.flush_interval, 10 s), so a use takes up to that long to count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

import asyncpg
import structlog
from prometheus_client import Gauge

from authproxy.errors import StoreUnavailable
from authproxy.keys.store import KEY_COLUMNS, KeyRecord, Store, key_record

log = structlog.get_logger(__name__)

# The gauge's label values and their thresholds: a fixed set, never a key or a space.
GAUGE_THRESHOLDS: Final = (("30d", 30 * 86400), ("90d", 90 * 86400))

# $1: now; the thresholds' cut-offs follow.
_ACTIVE = "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)"
_LAST_SEEN = "COALESCE(last_used_at, created_at)"
_LIST_UNUSED = f"""
SELECT {KEY_COLUMNS} FROM api_keys
WHERE space_id = $3 AND {_ACTIVE} AND {_LAST_SEEN} < $2
ORDER BY created_at DESC, id DESC"""
# One pass over the active keys of every space, however many thresholds.
_COUNT_UNUSED = (
    "SELECT "
    + ", ".join(
        f"count(*) FILTER (WHERE {_LAST_SEEN} < ${n})" for n in range(2, len(GAUGE_THRESHOLDS) + 2)
    )
    + f" FROM api_keys WHERE {_ACTIVE}"
)


async def list_unused(
    store: Store, space_id: str, *, now: datetime, seconds: int
) -> list[KeyRecord]:
    """The space's active keys unused for more than ``seconds``, newest first."""
    async with store.connection() as conn:
        rows = await conn.fetch(
            _LIST_UNUSED, now, now - timedelta(seconds=seconds), space_id, timeout=store.timeout
        )
    return [key_record(r) for r in rows]


async def count_unused(store: Store, now: datetime) -> dict[str, int]:
    """Active keys of every space unused for more than each GAUGE_THRESHOLDS entry."""
    cutoffs = [now - timedelta(seconds=seconds) for _, seconds in GAUGE_THRESHOLDS]
    async with store.connection() as conn:
        row = await conn.fetchrow(_COUNT_UNUSED, now, *cutoffs, timeout=store.timeout)
    return {label: int(row[i]) for i, (label, _) in enumerate(GAUGE_THRESHOLDS)}


class UnusedKeysGauge:
    """Keeps ``authproxy_keys_unused{unused_for}`` current: one query every ``interval``
    seconds (keys.unused_gauge_interval), never one per request or per scrape."""

    def __init__(
        self,
        *,
        store: Store,
        gauge: Gauge,
        interval: float,
        wall_clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._gauge = gauge
        self._interval = interval
        self._now = wall_clock

    async def refresh(self) -> None:
        for label, count in (await count_unused(self._store, self._now())).items():
            self._gauge.labels(unused_for=label).set(count)

    async def run(self) -> None:
        """Refresh now and then every interval, until cancelled; a failed query (PostgreSQL
        away, a schema not migrated yet) keeps the last values until the next one."""
        while True:
            try:
                await self.refresh()
            except (StoreUnavailable, asyncpg.PostgresError) as exc:
                log.warning("unused_keys_gauge_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self._interval)
