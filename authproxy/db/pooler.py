"""Connections to db.url as its way to PostgreSQL needs: direct, or through a transaction
pooler such as PgBouncer (issue 20), whatever port the pooler listens on.

Through a transaction pooler each transaction may get another server connection, so a
named prepared statement (asyncpg's statement cache) may be missing where it runs, and
a session reset would hit some other client's session. ``db.pooler: auto`` guesses from
the URL and, when the URL says nothing, asks the first connection: PostgreSQL's cancel
key (BackendKeyData) carries the backend's own pid, a pooler's carries a number of its
own, so a pid that differs from ``pg_backend_pid()`` means a pooler in between.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import structlog

from authproxy.config.schema import Config

log = structlog.get_logger(__name__)

# Simple query protocol: nothing is prepared, so the question itself is safe to ask a pooler.
_SAME_BACKEND = """DO $$BEGIN
    IF pg_backend_pid() <> {pid} THEN RAISE EXCEPTION 'not the backend of this session';
    END IF;
END$$"""


async def is_behind_pooler(conn: asyncpg.Connection) -> bool:
    """Whether ``conn`` talks to a pooler rather than to its own PostgreSQL backend."""
    try:
        await conn.execute(_SAME_BACKEND.format(pid=int(conn.get_server_pid())))
    except asyncpg.RaiseError:
        return True
    return False


class Connector:
    """Opens db.url's connections (asyncpg.create_pool's ``connect`` and ``reset``), with
    asyncpg's documented PgBouncer settings once db.url is known to be a pooler."""

    def __init__(self, cfg: Config) -> None:
        db = cfg.db
        # None: db.pooler auto and nothing in the URL tells; the first connection will.
        self.pooled: bool | None = True if db.is_transaction_pooled else None
        if db.pooler == "none":
            self.pooled = False

    async def connect(self, *args: Any, **kwargs: Any) -> asyncpg.Connection:
        if self.pooled:
            return await asyncpg.connect(*args, statement_cache_size=0, **kwargs)
        conn = await asyncpg.connect(*args, **kwargs)
        if self.pooled is None:
            self.pooled = await is_behind_pooler(conn)
            if self.pooled:
                log.info("db_url_is_a_pooler", setting="db.pooler", detected="cancel key")
                await conn.close()
                return await self.connect(*args, **kwargs)
        return conn

    async def reset(self, conn: asyncpg.Connection) -> None:
        """On release. Through a pooler, no reset query (pg_advisory_unlock_all, UNLISTEN *,
        RESET ALL): it would run on whichever server connection is free, maybe dropping
        another client's session lock, and cost a round trip per query; nothing of ours
        sets session state, and asyncpg still rolls back an open transaction."""
        if not self.pooled and (query := conn.get_reset_query()):
            await conn.execute(query)
