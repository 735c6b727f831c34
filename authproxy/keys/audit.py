"""The audit trail of key changes: who, what, when, from where, under which request id."""

from __future__ import annotations

import getpass
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

AuditAction = Literal["key.created", "key.revoked", "key.rolled"]

_INSERT_AUDIT = """
INSERT INTO audit_events (space_id, action, key_id, actor, client_address, request_id)
VALUES ($1, $2, $3, $4, $5, $6)"""
# Keyset pagination: "before" is the smallest id of the previous page.
LIST_AUDIT = """
SELECT id, occurred_at, space_id, action, key_id, actor, client_address, request_id
FROM audit_events
WHERE space_id = $1 AND ($2::bigint IS NULL OR id < $2)
ORDER BY id DESC
LIMIT $3"""


@dataclass(frozen=True, slots=True)
class AuditContext:
    """Who is acting and from where; travels with every change to the store."""

    actor: str
    client_address: str | None = None
    request_id: str | None = None

    @classmethod
    def for_cli(cls) -> AuditContext:
        return cls(actor=f"cli:{getpass.getuser()}")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    occurred_at: datetime
    space_id: str
    action: str
    key_id: str
    actor: str
    client_address: str | None
    request_id: str | None


def audit_event(row: Any) -> AuditEvent:
    return AuditEvent(
        id=row["id"],
        occurred_at=row["occurred_at"],
        space_id=row["space_id"],
        action=row["action"],
        key_id=str(row["key_id"]),
        actor=row["actor"],
        client_address=row["client_address"],
        request_id=row["request_id"],
    )


async def write_audit(
    conn: asyncpg.Connection,
    action: AuditAction,
    key_id: uuid.UUID,
    space_id: str,
    ctx: AuditContext,
    timeout: float,
) -> None:
    """Called inside the transaction that makes the change, so both commit or neither."""
    await conn.execute(
        _INSERT_AUDIT,
        space_id,
        action,
        key_id,
        ctx.actor,
        ctx.client_address,
        ctx.request_id,
        timeout=timeout,
    )
