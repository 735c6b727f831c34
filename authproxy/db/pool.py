"""The PostgreSQL connection pool every database user of the daemon shares."""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog

from authproxy.config.schema import Config
from authproxy.db.migrations import migrate
from authproxy.errors import StoreUnavailable

log = structlog.get_logger(__name__)

# A server that answers but gives no connection to this database: it does not exist
# (SQLSTATE 3D000) or accepts no connections now (55000: ALLOW_CONNECTIONS false, being
# dropped or restored). To the daemon that is PostgreSQL being away, never a 500.
CONNECTION_REFUSED = (asyncpg.InvalidCatalogNameError, asyncpg.ObjectNotInPrerequisiteStateError)


def pooler_options(cfg: Config) -> dict[str, Any]:
    """asyncpg settings for db.url: through a transaction pooler, what asyncpg documents
    for PgBouncer (no named prepared statements: each one would live on one server
    connection, and the next transaction may get another)."""
    return {"statement_cache_size": 0} if cfg.db.is_transaction_pooled else {}


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (pg_advisory_unlock_all, UNLISTEN *, RESET
    ALL): through a transaction pooler it would run on whichever server connection is
    free, maybe dropping another client's session lock, and cost a round trip per query.
    Nothing of ours sets session state; an open transaction is still rolled back."""


async def create_pool(cfg: Config) -> asyncpg.Pool:
    # min_size=0: the daemon starts (and serves cached keys, healthz) while PostgreSQL is
    # away, and connects as soon as it is back; readyz reports the difference. A URL with
    # several hosts (and target_session_attrs=read-write) follows a failover: a connection
    # the old primary dropped is replaced, on acquire, by one to the new primary.
    pooled = cfg.db.is_transaction_pooled
    return await asyncpg.create_pool(
        cfg.db.url,
        min_size=0,
        max_size=cfg.db.max_pool,
        timeout=cfg.db.connect_timeout,
        command_timeout=cfg.db.query_timeout,
        max_inactive_connection_lifetime=300,
        reset=_keep_session if pooled else None,
        **pooler_options(cfg),
    )


async def prepare_schema(cfg: Config, pool: asyncpg.Pool) -> None:
    try:
        async with pool.acquire(timeout=cfg.db.connect_timeout) as conn:
            if cfg.db.should_migrate_on_start:
                await migrate(conn)
    except (TimeoutError, OSError, asyncpg.PostgresConnectionError, *CONNECTION_REFUSED) as exc:
        if cfg.db.should_migrate_on_start:
            raise StoreUnavailable(f"cannot apply migrations: {exc}") from exc
        log.warning("db_unreachable_at_start", error=str(exc))
