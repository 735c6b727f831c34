"""Hear revokes from every process through PostgreSQL LISTEN/NOTIFY and refuse them here.

A revoke NOTIFYs inside its own transaction, so listeners only hear of committed
revokes. Notifications sent while our LISTEN connection was down are lost for good, so
every (re)connection flushes the whole cache: correctness first, a few cache misses
after a reconnect are cheap.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import structlog

from authproxy.auth.cache import VerifiedKeyCache
from authproxy.auth.live import LiveConnections
from authproxy.db.pooler import is_behind_pooler
from authproxy.keys.store import REVOCATION_CHANNEL
from authproxy.observability.metrics import Metrics

log = structlog.get_logger(__name__)

# TargetServerAttributeNotMatched (an InternalClientError): every host of a multi-host URL
# answered, none is a primary (mid-failover); it must not end the listener for good.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.TargetServerAttributeNotMatched,
)


def parse_notification(payload: str) -> tuple[str, float | None]:
    """``<key id>|<epoch seconds at NOTIFY>`` -> (key id, sent at); tolerant of a bare id."""
    key_id, _, sent_at = payload.partition("|")
    try:
        return key_id, float(sent_at) if sent_at else None
    except ValueError:
        return key_id, None


class RevocationListener:
    """Keeps one dedicated LISTEN connection alive, with backoff, for the process's life."""

    def __init__(
        self,
        *,
        dsn: str,
        cache: VerifiedKeyCache[Any],
        metrics: Metrics,
        connect_timeout: float,
        live: LiveConnections | None = None,
        ping_interval: float = 5.0,
        max_backoff: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._cache = cache
        self._metrics = metrics
        self._live = live
        self._recheck: asyncio.Task[None] | None = None
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._max_backoff = max_backoff
        self.connected = asyncio.Event()
        self.connections = 0  # how many times LISTEN was established

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        key_id, sent_at = parse_notification(payload)
        # Its cached entry, if any, is refused from now on and counted as evicted then.
        self._cache.invalidate_key(key_id)
        if sent_at is not None:
            self._metrics.revocation_lag.observe(max(0.0, time.time() - sent_at))
        log.info("revocation_received", key_id=key_id)
        if self._live is not None:  # its open tunnels and streams end too
            self._live.end_key(key_id, "revoked")

    async def run(self) -> None:
        """Listen until cancelled; reconnect with exponential backoff after any failure."""
        backoff = 0.05
        while True:
            try:
                await self._listen_once()
                log.warning("revocation_listener_lost", retry_in=0.05)
                backoff = 0.05
            except _UNAVAILABLE as exc:
                log.warning(
                    "revocation_listener_down",
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=round(backoff, 2),
                )
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _recheck_live(self, live: LiveConnections) -> None:
        try:
            await live.recheck()
        except Exception:  # noqa: BLE001 - retried at the next reconnect; logged
            log.error("live_connections_recheck_failed", exc_info=True)

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        try:
            if await is_behind_pooler(conn):
                # Fine through a session pooler; through a transaction pooler this LISTEN
                # sits on a server connection other clients get, and revokes go unheard.
                log.warning("revocation_listener_through_pooler", setting="db.listen_url")
            await conn.add_listener(REVOCATION_CHANNEL, self._on_notify)
            # Anything revoked while we were not listening may still be cached.
            flushed = len(self._cache)
            self._cache.clear()
            self._metrics.cache_evictions.labels(reason="listener_reconnect").inc(flushed)
            if self.connections:
                self._metrics.listener_reconnects.inc()
            self.connections += 1
            self.connected.set()
            log.info("revocation_listener_up", connections=self.connections)
            if self._live is not None and self.connections > 1:
                # Open connections of a key revoked while we were away: ask the database.
                self._recheck = asyncio.create_task(self._recheck_live(self._live))
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), self._ping_interval)
                except TimeoutError:
                    # A half-open TCP connection never reports its death: ask it.
                    await conn.fetchval("SELECT 1", timeout=self._connect_timeout)
        finally:
            conn.terminate()
