"""A PostgreSQL failover under two daemons, on one machine: a primary and its streaming
standby (two private clusters), db.url listing both with target_session_attrs=read-write.
The primary stops; cached keys keep working, unknown keys get 503 (never 200), readyz says
503; the standby is promoted; without a restart, pools and listeners find it, readyz says
200 again, and revocations are heard again (DESIGN.md "Behind a connection pooler",
issue 20)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import Upstream
from tests.daemon import Daemon, DaemonLauncher
from tests.fleet import metric_total, wait_for
from tests.stoppable_postgres import StoppablePostgres
from tests.test_fleet import (
    ADMIN,
    QUICK_STOP,
    READYZ,
    REVOCATION_DEADLINE,
    SPACE,
    call,
    get_json,
    refusal_lag,
    revoke_via_admin,
    scrape,
    wait_listener_up,
)

SWITCH_SECONDS = 2.0  # how long the fleet runs with no primary at all
RECOVERY_TIMEOUT = 20.0
# Short timeouts: a dead primary must cost each lookup a second at most.
DAEMON: dict[str, Any] = {
    "db": {"connect_timeout": 1, "query_timeout": 1},
    "cache": {"ttl": 60, "outage_grace": 300},
    "server": QUICK_STOP,
}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[StoppablePostgres, StoppablePostgres]]:
    """A primary and its hot standby, each a private server; both stopped at the end."""
    primary = StoppablePostgres.start(tmp_path / "primary")
    try:
        standby = StoppablePostgres.start_standby(primary, tmp_path / "standby")
        try:
            yield primary, standby
        finally:
            standby.close()
    finally:
        primary.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


def multi_host_url(*servers: StoppablePostgres) -> str:
    sockets = ",".join(str(s.socket_dir) for s in servers)
    return f"postgresql://postgres@/postgres?host={sockets}&target_session_attrs=read-write"


async def replicated(standby: StoppablePostgres, key_ids: list[str]) -> None:
    """Wait until the standby has replayed the rows of ``key_ids``."""

    async def present() -> bool:
        conn = await asyncpg.connect(standby.url)
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM api_keys WHERE id = ANY($1::uuid[])", key_ids
            )
        except asyncpg.UndefinedTableError:
            return False
        finally:
            await conn.close()
        return bool(found == len(key_ids))

    assert await wait_for(present, 10.0, 0.05) is not None, "the standby did not catch up"


async def readyz(session: aiohttp.ClientSession, daemon: Daemon) -> int:
    return (await get_json(session, daemon.url(READYZ)))[0]


class TestFailover:
    async def test_switch_to_a_promoted_standby(
        self,
        tmp_path: Path,
        cluster: tuple[StoppablePostgres, StoppablePostgres],
        upstream: Upstream,
        http: aiohttp.ClientSession,
    ) -> None:
        """Primary stopped: cached keys 200 on both daemons all along, an unknown key 503,
        readyz 503. Standby promoted: readyz 200, the unknown key 200, and a revoke through
        A is refused by B within 1 s: pool and listener moved without a restart."""
        primary, standby = cluster
        async with DaemonLauncher(
            tmp_path, database_url=multi_host_url(primary, standby), upstream_url=upstream.url
        ) as launcher:
            migrated = await launcher.cli("migrate")
            assert migrated.exit_code == 0, migrated.stderr
            cached = await launcher.create_key(SPACE, "cached")
            unknown = await launcher.create_key(SPACE, "never used before the switch")
            await replicated(standby, [cached["id"], unknown["id"]])
            a = await launcher.start(admin=ADMIN, **DAEMON)
            b = await launcher.start(**DAEMON)
            for daemon in (a, b):
                await wait_listener_up(daemon)
                assert await call(http, daemon, cached["key"]) == 200

            primary.stop()
            switch_started = time.monotonic()
            seen: dict[int, int] = {}
            while time.monotonic() - switch_started < SWITCH_SECONDS:
                for daemon in (a, b):
                    status = await call(http, daemon, cached["key"])
                    seen[status] = seen.get(status, 0) + 1
                await asyncio.sleep(0.05)
            assert seen.keys() == {200}, f"a cached key during the switch: {seen}"
            for daemon in (a, b):
                status, body = await get_json(
                    http,
                    daemon.url("/api/v1/points"),
                    {"Authorization": f"Bearer {unknown['key']}"},
                )
                assert status == 503, (status, body)
                assert body["error"]["code"] == "key_store_unavailable"
                assert await readyz(http, daemon) == 503

            standby.promote()
            promoted = time.monotonic()
            for daemon in (a, b):

                async def ready(daemon: Daemon = daemon) -> bool:
                    return await readyz(http, daemon) == 200

                assert await wait_for(ready, RECOVERY_TIMEOUT, 0.1) is not None, (
                    f"readyz stayed 503 after the promotion; stderr:\n{daemon.stderr()[-3000:]}"
                )

                async def admitted(daemon: Daemon = daemon) -> bool:
                    status = await call(http, daemon, unknown["key"])
                    assert status in (200, 503), f"unknown key got {status} after the switch"
                    return status == 200

                assert await wait_for(admitted, RECOVERY_TIMEOUT, 0.1) is not None
                await wait_listener_up(daemon, times=2)
            print(f"\nboth daemons ready {time.monotonic() - promoted:.2f} s after the promotion")
            for daemon in (a, b):  # revokes sent while nobody listened: the whole cache went
                flushed = metric_total(
                    await scrape(http, daemon),
                    "authproxy_cache_evictions_total",
                    reason="listener_reconnect",
                )
                assert flushed >= 1, "the cache was not flushed after the listener came back"

            assert await call(http, b, cached["key"]) == 200
            await revoke_via_admin(http, a, cached["id"])
            lag = await refusal_lag(http, b, cached["key"], REVOCATION_DEADLINE)
            assert lag is not None, "B did not hear the revoke made on the new primary"
            revoked = await launcher.cli("keys", "revoke", "--space", SPACE, unknown["id"])
            assert revoked.exit_code == 0, revoked.stderr
            assert await refusal_lag(http, a, unknown["key"], REVOCATION_DEADLINE) is not None
