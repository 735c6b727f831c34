"""Create, list, roll and revoke keys: the operations behind the admin API and the CLI."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from authproxy.errors import InvalidInput
from authproxy.keys.audit import AuditContext, AuditEvent
from authproxy.keys.durations import parse_duration
from authproxy.keys.format import KeyHasher, NewKey, ParsedKey, generate_key
from authproxy.keys.leaks import LeakStatus, leak_statuses
from authproxy.keys.rolls import parse_grace, roll_key
from authproxy.keys.store import KeyRecord, NewKeyRow, Store
from authproxy.keys.unused import list_unused

SPACE_ID_RULE = "must be 1-64 characters: letters, digits, '.', '_', '-', starting alphanumeric"
NAME_RULE = "must be 1-100 printable characters after trimming"
EXPIRES_RULE = "must be an RFC 3339 date-time with a time zone, in the future"
RATE_RULE = "must be a number of requests per second above 0 and at most 1000000"
_SPACE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_NAME = 100
# RFC 3339 §5.6 date-time; fromisoformat alone also takes ISO 8601 forms like 2030-W01-1.
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


@dataclass(frozen=True, slots=True)
class CreatedKey:
    record: KeyRecord
    # The full key: shown once, never stored; kept out of repr, so no traceback or
    # assertion message can print it.
    key: str = field(repr=False)


def validate_space_id(space_id: str) -> str:
    if not _SPACE_ID.fullmatch(space_id):
        raise InvalidInput("space_id", SPACE_ID_RULE)
    return str(space_id)


def validate_name(name: Any) -> str:
    if not isinstance(name, str):
        raise InvalidInput("name", NAME_RULE)
    trimmed: str = name.strip()
    if not 1 <= len(trimmed) <= _MAX_NAME or not trimmed.isprintable():
        raise InvalidInput("name", NAME_RULE)
    return trimmed


def parse_expires_at(value: Any, now: datetime) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise InvalidInput("expires_at", EXPIRES_RULE)
    try:
        parsed = datetime.fromisoformat(value.upper())
        if parsed.tzinfo is None:
            raise ValueError("no time zone")
        # astimezone overflows for year-9999 values with a negative offset.
        parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidInput("expires_at", EXPIRES_RULE) from None
    if parsed <= now:
        raise InvalidInput("expires_at", EXPIRES_RULE)
    return parsed


def parse_rate_limit(value: Any) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (0 < value <= 1_000_000)
    ):
        raise InvalidInput("rate_limit_per_second", RATE_RULE)
    return float(value)


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    text: str = moment.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def audit_object(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "occurred_at": rfc3339(event.occurred_at),
        "action": event.action,
        "space_id": event.space_id,
        "key_id": event.key_id,
        "actor": event.actor,
        "client_address": event.client_address,
        "request_id": event.request_id,
    }


def key_object(record: KeyRecord, now: datetime, *, key: str | None = None) -> dict[str, Any]:
    """The key object of DESIGN.md; ``key`` only in the create and roll responses."""
    body: dict[str, Any] = {
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "space_id": record.space_id,
        "created_at": rfc3339(record.created_at),
        "last_used_at": rfc3339(record.last_used_at),
        "expires_at": rfc3339(record.expires_at),
        "revoked_at": rfc3339(record.revoked_at),
        "status": record.status(now),
        "rate_limit_per_second": record.rate_limit_per_second,
    }
    # Only on keys that were rolled: every other key object keeps its shape.
    if record.rolled_from is not None:
        body["rolled_from"] = record.rolled_from
    if record.rolled_to is not None:
        body["rolled_to"] = record.rolled_to
    if key is not None:
        body["key"] = key
    return body


class RevokedKeys(Protocol):
    """Where a revocation must take effect in this process at once (auth/cache.py's
    VerifiedKeyCache); other processes hear of it from PostgreSQL."""

    def invalidate_key(self, key_id: str) -> None: ...


class KeyService:
    """Key lifecycle with the side effects that must go along: hashing, cache eviction."""

    def __init__(
        self,
        *,
        store: Store,
        hasher: KeyHasher,
        executor: Executor,
        cache: RevokedKeys,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._executor = executor
        self._cache = cache
        self.now = wall_clock

    async def create(
        self,
        *,
        space_id: str,
        name: Any,
        audit: AuditContext,
        expires_at: Any = None,
        rate_limit: Any = None,
    ) -> CreatedKey:
        space_id = validate_space_id(space_id)
        name = validate_name(name)
        expires = parse_expires_at(expires_at, self.now())
        rate = parse_rate_limit(rate_limit)
        while True:  # a taken lookup id has odds of ~2^-59 per existing key: draw again
            new, row = await self._new_key()
            record = await self._store.create_key(
                space_id=space_id,
                name=name,
                lookup_id=row.lookup_id,
                prefix=row.prefix,
                secret_hash=row.secret_hash,
                expires_at=expires,
                audit=audit,
                rate_limit=rate,
            )
            if record is not None:
                return CreatedKey(record, new.full)

    async def roll(
        self,
        *,
        space_id: str,
        key_id: str,
        audit: AuditContext,
        grace_seconds: Any = None,
        name: Any = None,
    ) -> CreatedKey:
        """Replace the key with a new one (keys/rolls.py); the old one works ``grace_seconds``
        more at most. This process forgets the old key's cached expiry at once; the others
        hear the NOTIFY."""
        space_id = validate_space_id(space_id)
        grace = parse_grace(grace_seconds)
        new_name = None if name is None else validate_name(name)
        while True:  # a taken lookup id: draw again, as create does
            new, row = await self._new_key()
            now = self.now()
            rolled = await roll_key(
                self._store,
                space_id=space_id,
                key_id=key_id,
                name=new_name,
                now=now,
                grace_until=now + timedelta(seconds=grace),
                successor=row,
                audit=audit,
            )
            if rolled is not None:
                self._cache.invalidate_key(rolled.old.id)
                return CreatedKey(rolled.new, new.full)

    async def _new_key(self) -> tuple[NewKey, NewKeyRow]:
        """A fresh key and the row that stores it (argon2 in the executor)."""
        new = generate_key()
        secret_hash = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._hasher.hash, new.parsed.secret
        )
        return new, NewKeyRow(new.parsed.lookup_id, new.parsed.display_prefix, secret_hash)

    async def list_keys(self, space_id: str, *, unused_for: str | None = None) -> list[KeyRecord]:
        """Every key of the space; with ``unused_for`` (a duration: ``90d``), only the active
        keys unused for longer (keys/unused.py)."""
        space_id = validate_space_id(space_id)
        if unused_for is None:
            return await self._store.list_keys(space_id)
        seconds = parse_duration(unused_for, "unused_for")
        return await list_unused(self._store, space_id, now=self.now(), seconds=seconds)

    async def leak_statuses(self, found: Sequence[ParsedKey]) -> list[LeakStatus]:
        """What each key a leak scan found is (keys/leaks.py)."""
        return await leak_statuses(
            self._store, found, hasher=self._hasher, executor=self._executor, now=self.now()
        )

    async def revoke(self, *, space_id: str, key_id: str, audit: AuditContext) -> KeyRecord:
        """Revoke in the database, then refuse it from this process's cache at once."""
        record = await self._store.revoke_key(
            space_id=validate_space_id(space_id), key_id=key_id, audit=audit
        )
        self._cache.invalidate_key(record.id)
        return record

    async def audit_trail(
        self, space_id: str, *, limit: int, before: int | None
    ) -> list[AuditEvent]:
        return await self._store.list_audit(validate_space_id(space_id), limit=limit, before=before)
