"""The PostgreSQL connection pool every database user of the daemon shares."""

from __future__ import annotations

import asyncpg
import structlog

from authproxy.config.schema import Config
from authproxy.db.migrations import migrate
from authproxy.db.pooler import Connector
from authproxy.errors import StoreUnavailable

log = structlog.get_logger(__name__)

# A server that answers but gives no connection to this database: it does not exist
# (SQLSTATE 3D000) or accepts no connections now (55000: ALLOW_CONNECTIONS false, being
# dropped or restored). To the daemon that is PostgreSQL being away, never a 500.
CONNECTION_REFUSED = (asyncpg.InvalidCatalogNameError, asyncpg.ObjectNotInPrerequisiteStateError)


async def create_pool(cfg: Config) -> asyncpg.Pool:
    # min_size=0: the daemon starts (and serves cached keys, healthz) while PostgreSQL is
    # away, and connects as soon as it is back; readyz reports the difference. A URL with
    # several hosts (and target_session_attrs=read-write) follows a failover: a connection
    # the old primary dropped is replaced, on acquire, by one to the new primary.
    connector = Connector(cfg)
    return await asyncpg.create_pool(
        cfg.db.url,
        min_size=0,
        max_size=cfg.db.max_pool,
        timeout=cfg.db.connect_timeout,
        command_timeout=cfg.db.query_timeout,
        max_inactive_connection_lifetime=300,
        connect=connector.connect,
        reset=connector.reset,
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
