"""Apply sql/NNN_name.sql in order, once each, recorded in schema_migrations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

from authproxy.errors import MigrationError

log = structlog.get_logger(__name__)

_FILENAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# Any constant works; it only has to be the same in every authproxy process, so that
# two replicas starting together do not both apply the same migration.
_ADVISORY_LOCK_ID = 0x61757468  # "auth"

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in (resources.files("authproxy.db") / "sql").iterdir():
        match = _FILENAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply pending migrations, each in its own transaction; return those applied.

    Each transaction first takes a transaction-level advisory lock, released by its own
    COMMIT or ROLLBACK, then looks at what is applied: two replicas starting together
    never apply the same migration, and no session state is needed, so this works
    through a transaction pooler such as PgBouncer too (issue 20), where a session lock
    would be taken on one server connection and its unlock sent to another.
    """
    applied: list[Migration] = []
    known = available_migrations()
    while True:
        migration = None
        try:
            async with conn.transaction():
                migration = await _next_pending(conn, known)
                if migration is None:
                    return applied
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
        except asyncpg.PostgresError as exc:
            if migration is None:
                raise
            raise MigrationError(
                f"migration {migration.version:03d}_{migration.name} failed: {exc}"
            ) from exc
        log.info("migration_applied", version=migration.version, name=migration.name)
        applied.append(migration)


async def _next_pending(conn: asyncpg.Connection, known: list[Migration]) -> Migration | None:
    """Inside the caller's transaction: take the lock, then the first migration not applied.

    Raises:
        MigrationError: the database has migrations this authproxy does not know.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADVISORY_LOCK_ID)
    await conn.execute(_CREATE_TABLE)
    done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    if done - {m.version for m in known}:
        raise MigrationError(
            f"database has migrations {sorted(done)} but this authproxy knows only "
            f"{[m.version for m in known]}: upgrade authproxy"
        )
    return next((m for m in known if m.version not in done), None)
