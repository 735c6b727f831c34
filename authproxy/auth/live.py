"""Open connections by key id, so that a revoke or an expiry ends them, not only new requests.

A revoke stops the key's next request everywhere within milliseconds (revocations.py),
but a WebSocket tunnel or a response still streaming was admitted before it and would
otherwise flow for as long as it lasts (Kong, Tyk and oauth2-proxy leave them be). Every
such connection is tracked here under its key id while it is open; three things end it:

* a revoke heard from any process (the listener calls ``end_key``);
* its key's ``expires_at`` (one timer, set for the earliest expiry among open ones);
* after the listener reconnected (revokes sent meanwhile are lost), a re-check of every
  tracked key id against the database (``recheck``).

Ending is the connection's own business (``end`` callback): a tunnel sends a close frame
1008, a stream is cut. Nothing here holds a key, only key ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal

import structlog

from authproxy.observability.metrics import Metrics

log = structlog.get_logger(__name__)

Kind = Literal["websocket", "stream"]
# Which of a set of key ids are still active (neither revoked nor expired nor gone).
StillValid = Callable[[list[str]], Awaitable[set[str]]]


class LiveConnection:
    """One tracked connection; ``end(reason)`` ends it (called at most once)."""

    __slots__ = ("end", "ended", "key_id", "kind")

    def __init__(self, key_id: str, kind: Kind, end: Callable[[str], None]) -> None:
        self.key_id = key_id
        self.kind = kind
        self.end = end
        self.ended = False


class LiveConnections:
    """The process's open connections by key id (see the module docstring)."""

    def __init__(
        self, *, metrics: Metrics, wall_clock: Callable[[], datetime], still_valid: StillValid
    ) -> None:
        self._metrics = metrics
        self._wall_clock = wall_clock
        self._still_valid = still_valid
        self._by_key: dict[str, set[LiveConnection]] = {}
        self._expiring: dict[str, datetime] = {}  # tracked key ids that have an expiry
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: datetime | None = None

    def __len__(self) -> int:
        return sum(len(conns) for conns in self._by_key.values())

    def track(
        self, key_id: str, expires_at: datetime | None, kind: Kind, end: Callable[[str], None]
    ) -> LiveConnection:
        conn = LiveConnection(key_id, kind, end)
        conns = self._by_key.get(key_id)
        if conns is None:
            conns = self._by_key[key_id] = set()
        conns.add(conn)
        if expires_at is not None:
            self._expiring[key_id] = expires_at
            if self._timer_at is None or expires_at < self._timer_at:
                self._arm(expires_at)
        return conn

    def untrack(self, conn: LiveConnection) -> None:
        conns = self._by_key.get(conn.key_id)
        if conns is None:
            return
        conns.discard(conn)
        if not conns:
            del self._by_key[conn.key_id]
            self._expiring.pop(conn.key_id, None)

    def end_key(self, key_id: str, reason: str) -> int:
        """End every open connection of ``key_id``; how many were open."""
        conns = self._by_key.pop(key_id, None)
        self._expiring.pop(key_id, None)
        if not conns:
            return 0
        for conn in conns:
            if conn.ended:
                continue
            conn.ended = True
            self._metrics.live_ended.labels(kind=conn.kind, reason=reason).inc()
            try:
                conn.end(reason)
            except Exception:  # noqa: BLE001 - one connection must not spare the others
                log.error("live_connection_end_failed", key_id=key_id, exc_info=True)
        log.info("live_connections_ended", key_id=key_id, reason=reason, count=len(conns))
        return len(conns)

    async def recheck(self) -> None:
        """End the connections of every tracked key that is no longer active. Run after
        the listener reconnected: revokes sent while it was away were never heard."""
        key_ids = list(self._by_key)
        if not key_ids:
            return
        valid = await self._still_valid(key_ids)
        for key_id in key_ids:
            if key_id not in valid:
                self.end_key(key_id, "revoked")

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None

    # -- expiry
    def _arm(self, at: datetime) -> None:
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, (at - self._wall_clock()).total_seconds())
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_expiry)

    def _on_expiry(self) -> None:
        self._timer = self._timer_at = None
        now = self._wall_clock()
        for key_id in [k for k, at in self._expiring.items() if at <= now]:
            self.end_key(key_id, "expired")
        if self._expiring:
            self._arm(min(self._expiring.values()))
