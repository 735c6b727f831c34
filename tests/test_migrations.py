"""sql/ migrations: applied in order, once each, safely from several processes at once."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from authproxy.db.migrations import migrate
from authproxy.errors import MigrationError

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
FILENAME = re.compile(r"(\d{3})_([a-z0-9_]+)\.sql")
# Every migration file shipped, as (version, name), in the order they must apply.
SHIPPED = sorted((int(m[1]), m[2]) for p in SQL_DIR.iterdir() if (m := FILENAME.fullmatch(p.name)))

Connect = Callable[[], Awaitable[asyncpg.Connection]]


@pytest.fixture
async def connect(empty_database_url: str) -> AsyncIterator[Connect]:
    """connect() -> a new connection to this test's empty database, closed afterwards."""
    opened: list[asyncpg.Connection] = []

    async def open_one() -> asyncpg.Connection:
        conn = await asyncpg.connect(empty_database_url)
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        await conn.close()


async def recorded(conn: asyncpg.Connection) -> list[tuple[int, str]]:
    rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    return [(r["version"], r["name"]) for r in rows]


async def tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    return {r["table_name"] for r in rows}


class TestMigrate:
    def test_sql_files_are_shipped(self) -> None:
        """The repository ships at least the key table migration, numbered from 001."""
        assert SHIPPED, f"no NNN_name.sql files in {SQL_DIR}"
        assert SHIPPED[0] == (1, "api_keys")
        assert [v for v, _ in SHIPPED] == list(range(1, len(SHIPPED) + 1))

    async def test_first_run_applies_every_file_in_order(self, connect: Connect) -> None:
        """On an empty database every sql/ file is applied, in order, and recorded."""
        conn = await connect()
        applied = await migrate(conn)
        assert [(m.version, m.name) for m in applied] == SHIPPED
        assert await recorded(conn) == SHIPPED

    async def test_second_run_applies_nothing(self, connect: Connect) -> None:
        """Running migrate again changes nothing and records nothing twice."""
        conn = await connect()
        await migrate(conn)
        assert await migrate(conn) == []
        assert await recorded(conn) == SHIPPED

    async def test_creates_the_key_table(self, connect: Connect) -> None:
        """After migrating, the key table exists with the columns the product needs."""
        conn = await connect()
        await migrate(conn)
        assert {"schema_migrations", "api_keys"} <= await tables(conn)
        columns = {
            r["column_name"]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'api_keys'"
            )
        }
        assert {
            "id",
            "space_id",
            "name",
            "lookup_id",
            "prefix",
            "secret_hash",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
        } <= columns

    async def test_key_table_stores_no_plain_key(self, connect: Connect) -> None:
        """No column of the key table is meant for the key itself, only its hash."""
        conn = await connect()
        await migrate(conn)
        columns = {
            r["column_name"]
            for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'api_keys'"
            )
        }
        assert not columns & {"key", "secret", "api_key", "token"}

    async def test_concurrent_runs_apply_each_migration_once(self, connect: Connect) -> None:
        """Two processes migrating at the same moment both succeed; each file applies once."""
        first, second = await connect(), await connect()
        results = await asyncio.gather(migrate(first), migrate(second))
        applied = sorted((m.version, m.name) for run in results for m in run)
        assert applied == SHIPPED
        assert await recorded(first) == SHIPPED

    async def test_many_concurrent_runs(self, connect: Connect) -> None:
        """Even five replicas starting together leave one record per migration."""
        conns = [await connect() for _ in range(5)]
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted((m.version, m.name) for run in results for m in run) == SHIPPED
        assert await recorded(conns[0]) == SHIPPED

    async def test_lock_is_released_after_migrating(self, connect: Connect) -> None:
        """A finished migrate leaves no advisory lock behind for other processes to wait on."""
        conn = await connect()
        await migrate(conn)
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert held == 0

    async def test_newer_database_is_refused(self, connect: Connect) -> None:
        """A database migrated by a newer authproxy raises MigrationError saying to upgrade,
        and is left untouched."""
        conn = await connect()
        await migrate(conn)
        future = SHIPPED[-1][0] + 1
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, 'future')", future
        )
        with pytest.raises(MigrationError) as caught:
            await migrate(conn)
        message = str(caught.value)
        assert str(future) in message
        assert "upgrade authproxy" in message
        assert await recorded(conn) == [*SHIPPED, (future, "future")]

    async def test_newer_database_refused_before_anything_applies(self, connect: Connect) -> None:
        """A database that only knows a future migration gets none of ours applied."""
        conn = await connect()
        await conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'future')")
        with pytest.raises(MigrationError, match="999"):
            await migrate(conn)
        assert await tables(conn) == {"schema_migrations"}
