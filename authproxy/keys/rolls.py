"""Roll a key: a new key takes its place, and the old one keeps working for a grace period.

One transaction:
  1. the old key, locked: NotFound outside its space; Conflict when it is revoked, expired
     or rolled already (it has a successor: roll that one);
  2. the new key: the old one's space, name (unless another is given), expiry and rate
     limit, with ``rolled_from`` naming the old key;
  3. the old key: ``expires_at`` becomes the earlier of its own and now + grace (never
     later), ``rolled_to`` names the new key;
  4. the audit trail: ``key.created`` for the new key, ``key.rolled`` for the old;
  5. a NOTIFY, as a revoke sends: every process forgets what it cached of the old key, so
     its new expiry holds everywhere at once (auth/revocations.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from authproxy.errors import Conflict, InvalidInput, NotFound
from authproxy.keys.audit import AuditContext, write_audit
from authproxy.keys.store import (
    KEY_COLUMNS,
    KeyRecord,
    NewKeyRow,
    Store,
    as_uuid,
    key_record,
    notify_key_changed,
)

GRACE_DEFAULT: Final = 86400
GRACE_MAX: Final = 30 * 86400
GRACE_RULE: Final = "must be a whole number of seconds from 0 to 2592000 (30 days)"
REVOKED_MESSAGE: Final = "This key is revoked; create a new key instead."
EXPIRED_MESSAGE: Final = "This key has expired; create a new key instead."
ROLLED_MESSAGE: Final = "This key was rolled already; roll the key that replaced it: {}."

_LOCK = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND space_id = $2 FOR UPDATE"
_INSERT_SUCCESSOR = f"""
INSERT INTO api_keys (id, space_id, name, lookup_id, prefix, secret_hash, expires_at,
                      rate_limit_per_second, rolled_from)
SELECT $1, space_id, COALESCE($2::text, name), $3, $4, $5, expires_at, rate_limit_per_second, id
FROM api_keys WHERE id = $6
ON CONFLICT (lookup_id) DO NOTHING
RETURNING {KEY_COLUMNS}"""
# LEAST ignores NULL: a key without an expiry gets now + grace.
_RETIRE = f"""
UPDATE api_keys SET expires_at = LEAST(expires_at, $2), rolled_to = $3 WHERE id = $1
RETURNING {KEY_COLUMNS}"""


@dataclass(frozen=True, slots=True)
class Rolled:
    old: KeyRecord
    new: KeyRecord


def parse_grace(value: Any) -> int:
    """``grace_seconds`` of a roll: a whole number from 0 to 30 days; absent: one day."""
    if value is None:
        return GRACE_DEFAULT
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= GRACE_MAX:
        raise InvalidInput("grace_seconds", GRACE_RULE)
    return value


def refuse_unless_rollable(record: KeyRecord, now: datetime) -> None:
    """Only an active key without a successor may be rolled.

    Raises:
        Conflict: revoked, expired, or rolled already.
    """
    status = record.status(now)
    if status == "revoked":
        raise Conflict("key_revoked", REVOKED_MESSAGE)
    if status == "expired":
        raise Conflict("key_expired", EXPIRED_MESSAGE)
    if record.rolled_to is not None:
        raise Conflict("key_rolled", ROLLED_MESSAGE.format(record.rolled_to))


async def roll_key(
    store: Store,
    *,
    space_id: str,
    key_id: str,
    name: str | None,
    now: datetime,
    grace_until: datetime,
    successor: NewKeyRow,
    audit: AuditContext,
) -> Rolled | None:
    """Roll ``key_id`` (see the module docstring) into ``successor``, made and hashed
    before (argon2 never runs inside a transaction); None when its lookup id is taken
    (nothing changed: the caller draws another key).

    Raises:
        NotFound: no key with that id in that space.
        Conflict: the key may not be rolled (refuse_unless_rollable).
    """
    old_id = as_uuid(key_id)
    timeout = store.timeout
    async with store.connection() as conn, conn.transaction():
        row = await conn.fetchrow(_LOCK, old_id, space_id, timeout=timeout)
        if row is None:
            raise NotFound(key_id)
        refuse_unless_rollable(key_record(row), now)
        new_row = await conn.fetchrow(
            _INSERT_SUCCESSOR,
            uuid.uuid4(),
            name,
            successor.lookup_id,
            successor.prefix,
            successor.secret_hash,
            old_id,
            timeout=timeout,
        )
        if new_row is None:
            return None
        old_row = await conn.fetchrow(_RETIRE, old_id, grace_until, new_row["id"], timeout=timeout)
        await write_audit(conn, "key.created", new_row["id"], space_id, audit, timeout)
        await write_audit(conn, "key.rolled", old_id, space_id, audit, timeout)
        await notify_key_changed(conn, old_id, timeout)
    return Rolled(old=key_record(old_row), new=key_record(new_row))
