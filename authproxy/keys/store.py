"""PostgreSQL key store: every SQL statement of the key table, returning frozen dataclasses."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import asyncpg

from authproxy.db.pool import CONNECTION_REFUSED
from authproxy.errors import NotFound, StoreUnavailable
from authproxy.keys.audit import LIST_AUDIT, AuditContext, AuditEvent, audit_event, write_audit

KeyStatus = Literal["active", "revoked", "expired"]
REVOCATION_CHANNEL = "authproxy_key_revoked"

# Errors that mean "the database could not answer", as opposed to a bug in our SQL.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    # No such database, or one accepting no connections now: was a 500 (issue 19).
    *CONNECTION_REFUSED,
    # A query that timed out on a connection the server dropped leaves asyncpg's protocol
    # mid-operation; returning that connection to the pool then raises this.
    asyncpg.InternalClientError,
)

KEY_COLUMNS = (
    "id, space_id, name, lookup_id, prefix, secret_hash, created_at, "
    "last_used_at, expires_at, revoked_at, rate_limit_per_second, rolled_from, rolled_to"
)

_INSERT = f"""
INSERT INTO api_keys (id, space_id, name, lookup_id, prefix, secret_hash, expires_at,
                      rate_limit_per_second)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (lookup_id) DO NOTHING
RETURNING {KEY_COLUMNS}"""
_BY_LOOKUP_ID = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE lookup_id = $1"
_LIST = f"""
SELECT {KEY_COLUMNS} FROM api_keys WHERE space_id = $1
ORDER BY created_at DESC, id DESC"""
# Only an active key changes: revoking twice keeps the first revocation time.
_REVOKE = f"""
UPDATE api_keys SET revoked_at = now()
WHERE id = $1 AND space_id = $2 AND revoked_at IS NULL
RETURNING {KEY_COLUMNS}"""
# Live connections after a lost LISTEN connection: which of their keys are still active.
_ACTIVE_IDS = """
SELECT id FROM api_keys
WHERE id = ANY($1::uuid[]) AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"""
_BY_ID = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND space_id = $2"
# Sent inside the transaction that revokes or rolls a key: listeners hear of it only once
# it committed, and drop what they cached of the key (its verdict, its expiry).
# Payload "<key id>|<epoch seconds>": listeners measure the revocation lag from it.
_NOTIFY = (
    f"SELECT pg_notify('{REVOCATION_CHANNEL}', "
    "$1 || '|' || extract(epoch FROM clock_timestamp())::text)"
)
# Forward-only: a late or reordered flush never moves last_used_at back in time.
_TOUCH = """
UPDATE api_keys AS k SET last_used_at = u.used_at
FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, used_at)
WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.used_at)"""
# Rows per last_used statement: a flush of 100,000 keys in one statement built about 20 MB
# of arguments at once (issue 6 measured the daemon's peak RSS), and held its row locks
# for the whole update.
_TOUCH_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    space_id: str
    name: str
    lookup_id: str
    prefix: str
    secret_hash: str = field(repr=False)  # out of repr: no traceback may print it
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    rate_limit_per_second: float | None = None  # None: the configured default
    rolled_from: str | None = None  # the key this one replaced (keys/rolls.py)
    rolled_to: str | None = None  # the key that replaced this one

    def status(self, now: datetime) -> KeyStatus:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True, slots=True)
class NewKeyRow:
    """What is stored of a new key: its lookup id, display prefix and secret's hash."""

    lookup_id: str
    prefix: str
    secret_hash: str = field(repr=False)  # out of repr: no traceback may print it


def key_record(row: Any) -> KeyRecord:
    return KeyRecord(
        id=str(row["id"]),
        space_id=row["space_id"],
        name=row["name"],
        lookup_id=row["lookup_id"],
        prefix=row["prefix"],
        secret_hash=row["secret_hash"],
        created_at=_aware(row["created_at"]),
        last_used_at=_aware(row["last_used_at"]),
        expires_at=_aware(row["expires_at"]),
        revoked_at=_aware(row["revoked_at"]),
        rate_limit_per_second=row["rate_limit_per_second"],
        rolled_from=_text(row["rolled_from"]),
        rolled_to=_text(row["rolled_to"]),
    )


def _text(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


_Moment = TypeVar("_Moment", datetime, None)


def _aware(moment: _Moment) -> _Moment:
    """asyncpg gives PostgreSQL's 'infinity' and '-infinity' as naive datetime.max and
    datetime.min, every other timestamptz in UTC; make those UTC too, so they compare,
    cache and print like any other time (a naive one failed every request with a 500)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def as_uuid(key_id: str) -> uuid.UUID:
    """The key id as a UUID; anything else names no key (404, never a hint)."""
    try:
        return uuid.UUID(key_id)
    except ValueError:
        raise NotFound(key_id) from None


async def notify_key_changed(conn: asyncpg.Connection, key_id: uuid.UUID, timeout: float) -> None:
    """Tell every process to forget what it cached of this key; call inside the change's
    transaction (auth/revocations.py listens)."""
    await conn.execute(_NOTIFY, str(key_id), timeout=timeout)


class Store:
    """All reads and writes of API keys. Raises StoreUnavailable when PostgreSQL is away."""

    def __init__(self, pool: asyncpg.Pool | None = None, *, query_timeout: float = 5.0) -> None:
        self._pool = pool
        self._timeout = query_timeout

    def open(self, pool: asyncpg.Pool) -> None:
        """Use ``pool`` from now on. The daemon builds its Store before the event loop
        runs (app.py) and opens the pool at startup."""
        self._pool = pool

    @property
    def timeout(self) -> float:
        """Seconds each statement may take."""
        return self._timeout

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; StoreUnavailable when PostgreSQL cannot give one."""
        if self._pool is None:
            raise StoreUnavailable("the key store is not open yet")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def ping(self) -> None:
        async with self.connection() as conn:
            await conn.fetchval("SELECT 1", timeout=self._timeout)

    async def create_key(
        self,
        *,
        space_id: str,
        name: str,
        lookup_id: str,
        prefix: str,
        secret_hash: str,
        expires_at: datetime | None,
        audit: AuditContext,
        rate_limit: float | None = None,
    ) -> KeyRecord | None:
        """Insert the key and its key.created audit event in one transaction.

        Returns None when the lookup id is already taken (the caller draws another).
        """
        async with self.connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                _INSERT,
                uuid.uuid4(),
                space_id,
                name,
                lookup_id,
                prefix,
                secret_hash,
                expires_at,
                rate_limit,
                timeout=self._timeout,
            )
            if row is None:
                return None
            await write_audit(conn, "key.created", row["id"], space_id, audit, self._timeout)
        return key_record(row)

    async def find_by_lookup_id(self, lookup_id: str) -> KeyRecord | None:
        async with self.connection() as conn:
            row = await conn.fetchrow(_BY_LOOKUP_ID, lookup_id, timeout=self._timeout)
        return None if row is None else key_record(row)

    async def active_key_ids(self, key_ids: list[str]) -> set[str]:
        """Which of ``key_ids`` are neither revoked nor expired (nor unknown)."""
        ids = [uuid.UUID(k) for k in key_ids]
        async with self.connection() as conn:
            rows = await conn.fetch(_ACTIVE_IDS, ids, timeout=self._timeout)
        return {str(row["id"]) for row in rows}

    async def list_keys(self, space_id: str) -> list[KeyRecord]:
        async with self.connection() as conn:
            rows = await conn.fetch(_LIST, space_id, timeout=self._timeout)
        return [key_record(r) for r in rows]

    async def revoke_key(self, *, space_id: str, key_id: str, audit: AuditContext) -> KeyRecord:
        """Revoke, audit and notify every process in one transaction; idempotent.

        A second revoke returns the key unchanged and writes nothing.

        Raises:
            NotFound: no key with that id in that space.
        """
        key_uuid = as_uuid(key_id)
        async with self.connection() as conn, conn.transaction():
            row = await conn.fetchrow(_REVOKE, key_uuid, space_id, timeout=self._timeout)
            if row is None:
                row = await conn.fetchrow(_BY_ID, key_uuid, space_id, timeout=self._timeout)
                if row is None:
                    raise NotFound(key_id)
                return key_record(row)
            await write_audit(conn, "key.revoked", key_uuid, space_id, audit, self._timeout)
            await notify_key_changed(conn, key_uuid, self._timeout)
        return key_record(row)

    async def list_audit(
        self, space_id: str, *, limit: int, before: int | None
    ) -> list[AuditEvent]:
        async with self.connection() as conn:
            rows = await conn.fetch(LIST_AUDIT, space_id, before, limit, timeout=self._timeout)
        return [audit_event(r) for r in rows]

    async def record_usage(self, uses: Iterable[tuple[str, datetime]]) -> None:
        """Advance last_used_at for many keys, in statements of at most _TOUCH_ROWS rows."""
        remaining = iter(uses)
        while chunk := list(itertools.islice(remaining, _TOUCH_ROWS)):
            ids = [uuid.UUID(key_id) for key_id, _ in chunk]
            times = [used_at for _, used_at in chunk]
            async with self.connection() as conn:
                await conn.execute(_TOUCH, ids, times, timeout=self._timeout)

    async def replace_hash(self, key_id: str, old_hash: str, new_hash: str) -> None:
        """Swap in a hash with current argon2 parameters, unless it changed meanwhile."""
        async with self.connection() as conn:
            await conn.execute(
                "UPDATE api_keys SET secret_hash = $3 WHERE id = $1 AND secret_hash = $2",
                uuid.UUID(key_id),
                old_hash,
                new_hash,
                timeout=self._timeout,
            )
