"""Behind PgBouncer in transaction pooling mode (DESIGN.md "Behind a connection pooler"):
Debian's pgbouncer, started by the test with its own ini in front of the test database;
db.url names it, db.listen_url names PostgreSQL itself. Every interface works unchanged:
admin API and CLI, revocation across daemons within a second, cache misses without a
prepared-statement error."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from authproxy.db.migrations import available_migrations
from authproxy.db.pooler import is_behind_pooler
from bench.lab.pgbouncer import PgBouncer
from tests.conftest import Upstream, with_database
from tests.daemon import Daemon, DaemonLauncher, run_cli
from tests.fleet import metric_total
from tests.test_fleet import (
    ADMIN,
    QUICK_STOP,
    REVOCATION_DEADLINE,
    SPACE,
    cached_on,
    call,
    refusal_lag,
    revoke_via_admin,
    scrape,
    wait_listener_up,
)
from tests.tokens import auth, mint

KEYS = f"/_authproxy/v1/spaces/{SPACE}/keys"
OWNER_ROLES = {SPACE: "owner"}  # minted per call: a token minted at import would expire
MISSES = 1000
CONCURRENCY = 16
# Signs that a statement met another server connection than the one it was prepared on.
POOLING_ERRORS = ("prepared statement", "InvalidSQLStatementName", "DuplicatePreparedStatement")


@pytest.fixture
def bouncer(database_url: str, tmp_path: Path) -> Iterator[PgBouncer]:
    """PgBouncer (pool_mode = transaction) in front of this test's database."""
    bouncer = PgBouncer.start(database_url, tmp_path / "pgbouncer", pool_size=5)
    try:
        yield bouncer
    finally:
        bouncer.close()


@pytest.fixture
async def pooled(
    tmp_path: Path, database_url: str, bouncer: PgBouncer, upstream: Upstream
) -> AsyncIterator[DaemonLauncher]:
    """Daemons and CLI with db.url on PgBouncer (db.listen_url: see listen_direct)."""
    async with DaemonLauncher(
        tmp_path, database_url=bouncer.pooled(database_url), upstream_url=upstream.url
    ) as launcher:
        yield launcher


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


def listen_direct(database_url: str, **sections: Any) -> dict[str, Any]:
    """YAML sections for a daemon behind PgBouncer: LISTEN on PostgreSQL itself."""
    return {"db": {"listen_url": database_url}, "server": QUICK_STOP, **sections}


def assert_no_pooling_errors(*daemons: Daemon) -> None:
    for daemon in daemons:
        text = daemon.stderr()
        assert not [e for e in POOLING_ERRORS if e in text], text[-3000:]
        errors = [e for e in daemon.log_events() if e.get("level") == "error"]
        assert errors == [], errors


async def admin(
    session: aiohttp.ClientSession, daemon: Daemon, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with session.request(
        method, daemon.url(KEYS + path), headers=auth(mint(OWNER_ROLES)), json=body
    ) as r:
        return r.status, await r.json(content_type=None)


class TestThroughPgBouncer:
    async def test_admin_api_and_cli(
        self,
        pooled: DaemonLauncher,
        database_url: str,
        http: aiohttp.ClientSession,
    ) -> None:
        """migrate, create, list, roll, revoke through the admin API and the CLI with
        db.url on PgBouncer (AUTHPROXY_DATABASE_LISTEN_URL for the CLI); keys work and
        revoked ones are refused."""
        env = pooled.env() | {"AUTHPROXY_DATABASE_LISTEN_URL": database_url}
        migrated = await run_cli(env, "migrate")
        assert migrated.exit_code == 0, migrated.stderr
        daemon = await pooled.start(**listen_direct(database_url, admin=ADMIN))

        status, created = await admin(http, daemon, "POST", "", {"name": "api"})
        assert status == 201, created
        assert await call(http, daemon, created["key"]) == 200
        status, rolled = await admin(http, daemon, "POST", f"/{created['id']}/roll", {})
        assert status == 201, rolled
        assert rolled["rolled_from"] == created["id"]
        status, revoked = await admin(http, daemon, "POST", f"/{rolled['id']}/revoke")
        assert (status, revoked["status"]) == (200, "revoked")
        assert await call(http, daemon, rolled["key"]) == 401

        made = await run_cli(env, "keys", "create", "--space", SPACE, "--name", "cli")
        assert made.exit_code == 0, made.stderr
        cli_key = made.json()
        assert await call(http, daemon, cli_key["key"]) == 200
        rolled_cli = await run_cli(env, "keys", "roll", "--space", SPACE, cli_key["id"])
        assert rolled_cli.exit_code == 0, rolled_cli.stderr
        gone = await run_cli(env, "keys", "revoke", "--space", SPACE, cli_key["id"])
        assert gone.exit_code == 0, gone.stderr
        listed = await run_cli(env, "keys", "list", "--space", SPACE)
        assert listed.exit_code == 0, listed.stderr
        cli_statuses = sorted(k["status"] for k in listed.json()["keys"] if k["name"] == "cli")
        assert cli_statuses == ["active", "revoked"]  # the roll's new key, the revoked one
        # The CLI's revoke went through PgBouncer; the daemon heard it on its direct LISTEN.
        assert await refusal_lag(http, daemon, cli_key["key"], REVOCATION_DEADLINE) is not None
        status, listing = await admin(http, daemon, "GET", "")
        assert status == 200
        assert len(listing["keys"]) == 4
        assert_no_pooling_errors(daemon)

    async def test_migrate_through_pgbouncer_alone(
        self, pooled: DaemonLauncher, pg_server_url: str, bouncer: PgBouncer
    ) -> None:
        """Three `authproxy migrate` at once with only db.url, on PgBouncer (on a port that
        does not look like one) apply every migration exactly once: the advisory lock lives
        in each migration's transaction, not in a session."""
        fresh = with_database(pg_server_url, "authproxy_test_" + secrets.token_hex(6))
        admin_conn = await asyncpg.connect(pg_server_url)
        await admin_conn.execute(f'CREATE DATABASE "{urlsplit(fresh).path[1:]}"')
        try:
            env = pooled.env() | {"AUTHPROXY_DATABASE_URL": bouncer.pooled(fresh)}
            runs = await asyncio.gather(*(run_cli(env, "migrate") for _ in range(3)))
        finally:
            await admin_conn.execute(f'DROP DATABASE "{urlsplit(fresh).path[1:]}" WITH (FORCE)')
            await admin_conn.close()
        assert [r.exit_code for r in runs] == [0, 0, 0], [r.stderr for r in runs]
        applied = [name for run in runs for name in run.json()["applied"]]
        shipped = [f"{m.version:03d}_{m.name}" for m in available_migrations()]
        assert sorted(applied) == shipped, "each migration applied exactly once"

    async def test_revoke_on_one_daemon_refused_by_the_other_within_a_second(
        self, pooled: DaemonLauncher, database_url: str, http: aiohttp.ClientSession
    ) -> None:
        """Two daemons on PgBouncer with direct listen URLs: a key cached on both, revoked
        through A's admin API, is refused by B within 1 s."""
        a = await pooled.start(**listen_direct(database_url, admin=ADMIN))
        b = await pooled.start(**listen_direct(database_url))
        key = await pooled.create_key(SPACE)
        await wait_listener_up(b)
        await cached_on(http, a, key["key"])
        await cached_on(http, b, key["key"])
        await revoke_via_admin(http, a, key["id"])
        assert await call(http, a, key["key"]) == 401
        lag = await refusal_lag(http, b, key["key"], REVOCATION_DEADLINE)
        assert lag is not None, f"B still admits the key {REVOCATION_DEADLINE} s after the revoke"
        print(f"\nB refused {lag * 1000:.0f} ms after A's revoke answered")
        assert_no_pooling_errors(a, b)

    async def test_a_thousand_cache_misses_without_an_error(
        self, pooled: DaemonLauncher, database_url: str, http: aiohttp.ClientSession
    ) -> None:
        """With the cache off, 1,000 concurrent requests on two daemons are 1,000 key
        lookups through PgBouncer (5 server connections for 2 x 10 pooled ones): every
        one 200, no prepared-statement error."""
        no_cache = {"cache": {"max_entries": 0}, "usage": {"flush_interval": 0.2}}
        daemons = [await pooled.start(**listen_direct(database_url, **no_cache)) for _ in "ab"]
        keys = [(await pooled.create_key(SPACE, f"k{i}"))["key"] for i in range(8)]
        before = [
            metric_total(await scrape(http, d), "authproxy_cache_misses_total") for d in daemons
        ]
        statuses: dict[int, int] = {}
        queue = iter(range(MISSES))

        async def worker() -> None:
            for i in queue:
                status = await call(http, daemons[i % 2], keys[i % len(keys)])
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        assert statuses == {200: MISSES}
        after = [
            metric_total(await scrape(http, d), "authproxy_cache_misses_total") for d in daemons
        ]
        assert sum(after) - sum(before) >= MISSES
        assert_no_pooling_errors(*daemons)


class TestPoolerDetection:
    async def test_listen_through_pgbouncer_is_logged(
        self, pooled: DaemonLauncher, http: aiohttp.ClientSession
    ) -> None:
        """Without db.listen_url the listener's LISTEN goes through PgBouncer: the daemon
        serves, and says so (revocation_listener_through_pooler naming db.listen_url)."""
        daemon = await pooled.start(server=QUICK_STOP)
        key = await pooled.create_key(SPACE)
        assert await call(http, daemon, key["key"]) == 200
        warned = [
            e for e in daemon.log_events() if e.get("event") == "revocation_listener_through_pooler"
        ]
        assert warned and warned[0]["setting"] == "db.listen_url", daemon.stderr()[-2000:]

    async def test_cancel_key_tells_a_pooler_from_postgresql(
        self, database_url: str, bouncer: PgBouncer
    ) -> None:
        """PostgreSQL's cancel key carries its backend's pid; PgBouncer's does not."""
        for url, behind in ((database_url, False), (bouncer.pooled(database_url), True)):
            conn = await asyncpg.connect(url, statement_cache_size=0)
            try:
                assert await is_behind_pooler(conn) is behind, url
            finally:
                await conn.close()
