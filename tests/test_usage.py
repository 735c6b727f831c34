"""UsageRecorder + Store.record_usage against a real database: big flushes, cancelled ones."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from authproxy.auth.usage import UsageRecorder
from authproxy.keys.store import Store
from authproxy.observability.metrics import Metrics


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


async def insert_keys(pool: asyncpg.Pool, n: int) -> list[str]:
    """n key rows, as many as a flush may carry, without paying argon2 for each."""
    ids = [uuid.uuid4() for _ in range(n)]
    await pool.execute(
        "INSERT INTO api_keys (id, space_id, name, lookup_id, prefix, secret_hash) "
        "SELECT id, 'plant-7', 'k', 'L' || n, 'asc_L' || n, 'not a hash' "
        "FROM unnest($1::uuid[]) WITH ORDINALITY AS u(id, n)",
        ids,
    )
    return [str(i) for i in ids]


async def last_used(pool: asyncpg.Pool) -> dict[str, datetime | None]:
    rows = await pool.fetch("SELECT id, last_used_at FROM api_keys")
    return {str(r["id"]): r["last_used_at"] for r in rows}


async def test_a_flush_larger_than_one_statement_writes_every_key(pool: asyncpg.Pool) -> None:
    """25,003 keys' uses cross two statement boundaries (10,000 rows each): every key gets
    its own time, and a second flush of older times moves nothing back."""
    key_ids = await insert_keys(pool, 25_003)
    base = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    usage = UsageRecorder(Metrics(), max_pending=1_000_000)
    for n, key_id in enumerate(key_ids):
        usage.record(key_id, base + timedelta(microseconds=n))
    assert await usage.flush(Store(pool)) == 25_003
    assert len(usage) == 0
    written = await last_used(pool)
    assert all(written[k] == base + timedelta(microseconds=n) for n, k in enumerate(key_ids))

    for key_id in key_ids:
        usage.record(key_id, base - timedelta(days=1))
    await usage.flush(Store(pool))
    assert await last_used(pool) == written


async def test_a_cancelled_flush_keeps_its_uses_for_the_next(pool: asyncpg.Pool) -> None:
    """Shutdown may cancel the periodic flush while PostgreSQL is writing it: the uses go
    back to pending, so the final flush still writes them."""
    key_ids = await insert_keys(pool, 3)
    used_at = datetime.now(UTC)
    usage = UsageRecorder(Metrics())
    for key_id in key_ids:
        usage.record(key_id, used_at)
    async with pool.acquire() as blocker:
        # Hold the rows' locks, so the flush's UPDATE waits inside PostgreSQL.
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("SELECT 1 FROM api_keys FOR UPDATE")
        flush = asyncio.create_task(usage.flush(Store(pool)))
        await asyncio.sleep(0.3)
        assert not flush.done() and len(usage) == 0  # taken, being written
        flush.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flush
        await transaction.rollback()
    assert len(usage) == 3
    assert await usage.flush(Store(pool)) == 3
    assert set((await last_used(pool)).values()) == {used_at}
