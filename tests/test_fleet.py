"""Several real daemon processes on one real PostgreSQL: the guarantees users cannot see
until they hurt (DESIGN.md, "Correctness that users cannot see until it hurts").

Revocation reaches every process within a second, and within seconds after the listener
connection was cut; last_used_at is written in batches, forward-only, and at shutdown;
a PostgreSQL outage keeps recently verified keys working and answers 503 (never 200, never
401) for the others; SIGTERM drains; ``serve --workers N`` restarts dead workers and merges
their metrics. Every daemon here is a ``python -m authproxy serve`` subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv
import pytest

from tests.conftest import Upstream, bearer
from tests.daemon import Daemon, DaemonLauncher
from tests.fleet import (
    KeepAliveClient,
    connect_to,
    listening_pids,
    metric_total,
    wait_for,
)
from tests.stoppable_postgres import StoppablePostgres
from tests.tokens import ADMIN_SECRET, auth, mint

SPACE = "plant-7"
ADMIN = {"jwt_secret": ADMIN_SECRET}
METRICS = "/_authproxy/metrics"
READYZ = "/_authproxy/readyz"
HEALTHZ = "/_authproxy/healthz"
# The product's promises (DESIGN.md): these are requirements, not tuning knobs.
REVOCATION_DEADLINE = 1.0
RECONNECT_REVOCATION_DEADLINE = 5.0
# Daemons that are not testing the drain itself stop quickly (the default drains 5 s).
QUICK_STOP = {"drain_delay": 0.1, "shutdown_timeout": 2}
LISTENER_EVENTS_DOWN = ("revocation_listener_lost", "revocation_listener_down")
TERMINATE_OTHERS = """
SELECT count(*) FROM (
    SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()) AS killed"""


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
async def fresh_http() -> AsyncIterator[aiohttp.ClientSession]:
    """A new TCP connection per request: with SO_REUSEPORT, any worker may take each one."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=15)
    ) as session:
        yield session


@pytest.fixture
def private_pg(tmp_path: Path) -> Iterator[StoppablePostgres]:
    """A PostgreSQL server of this test alone, which it may stop; stopped at the end."""
    server = StoppablePostgres.start(tmp_path / "pgdata")
    try:
        yield server
    finally:
        server.close()


async def call(
    session: aiohttp.ClientSession, daemon: Daemon, key: str, path: str = "/api/v1/points"
) -> int:
    """One proxied GET with ``key``; its status."""
    async with session.get(daemon.url(path), headers=bearer(key)) as resp:
        await resp.read()
        return resp.status


async def get_json(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with session.get(url, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def scrape(session: aiohttp.ClientSession, daemon: Daemon) -> str:
    async with session.get(daemon.url(METRICS)) as resp:
        assert resp.status == 200
        return await resp.text()


async def revoke_via_admin(session: aiohttp.ClientSession, daemon: Daemon, key_id: str) -> None:
    """Revoke through ``daemon``'s admin API; returns once the revoke has answered 200."""
    url = daemon.url(f"/_authproxy/v1/spaces/{SPACE}/keys/{key_id}/revoke")
    async with session.post(url, headers=auth(mint({SPACE: "owner"}))) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 200, body
        assert body["status"] == "revoked"


async def refusal_lag(
    session: aiohttp.ClientSession, daemon: Daemon, key: str, timeout: float
) -> float | None:
    """Poll every 20 ms until ``daemon`` answers 401 for ``key``; seconds taken, or None."""

    async def refused() -> bool:
        status = await call(session, daemon, key)
        assert status in (200, 401), f"unexpected {status} while waiting for the revoke"
        return status == 401

    return await wait_for(refused, timeout)


async def assert_stays_refused(session: aiohttp.ClientSession, daemon: Daemon, key: str) -> None:
    for _ in range(5):
        assert await call(session, daemon, key) == 401
        await asyncio.sleep(0.02)


async def list_keys(launcher: DaemonLauncher) -> dict[str, dict[str, Any]]:
    """The space's key objects by id, as `authproxy keys list` prints them."""
    result = await launcher.cli("keys", "list", "--space", SPACE)
    assert result.exit_code == 0, result.stderr
    return {k["id"]: k for k in result.json()["keys"]}


def last_used(key: dict[str, Any]) -> datetime | None:
    text = key["last_used_at"]
    return None if text is None else datetime.fromisoformat(text)


async def wait_last_used(
    launcher: DaemonLauncher, key_id: str, at_least: datetime, timeout: float = 10.0
) -> datetime:
    """Poll `keys list` until ``key_id``'s last_used_at is >= ``at_least``; return it."""
    deadline = time.monotonic() + timeout
    while True:
        seen = last_used((await list_keys(launcher))[key_id])
        if seen is not None and seen >= at_least:
            return seen
        assert time.monotonic() < deadline, (
            f"last_used_at of {key_id} is {seen}, still not >= {at_least} after {timeout} s"
        )
        await asyncio.sleep(0.2)


def listener_cycle(events: list[dict[str, Any]]) -> tuple[int, int, int] | None:
    """Indexes of (first revocation_listener_up, a loss after it, an up after that)."""
    names = [e.get("event") for e in events]
    try:
        first_up = names.index("revocation_listener_up")
        lost = next(i for i in range(first_up + 1, len(names)) if names[i] in LISTENER_EVENTS_DOWN)
        up_again = names.index("revocation_listener_up", lost + 1)
    except (ValueError, StopIteration):
        return None
    return first_up, lost, up_again


async def wait_listener_up(daemon: Daemon, times: int = 1, timeout: float = 10.0) -> None:
    async def up() -> bool:
        events = [e for e in daemon.log_events() if e.get("event") == "revocation_listener_up"]
        return len(events) >= times

    assert await wait_for(up, timeout, 0.05) is not None, (
        f"revocation_listener_up not logged {times}x; stderr:\n{daemon.stderr()}"
    )


async def cached_on(session: aiohttp.ClientSession, daemon: Daemon, key: str) -> None:
    """Use ``key`` twice on ``daemon``; the second use must be a fresh cache hit (metrics)."""
    before = metric_total(await scrape(session, daemon), "authproxy_cache_hits_total")
    assert await call(session, daemon, key) == 200
    assert await call(session, daemon, key) == 200
    after = metric_total(await scrape(session, daemon), "authproxy_cache_hits_total")
    assert after > before, "the key is not served from the cache"


class TestRevocationAcrossProcesses:
    async def test_revoke_on_a_reaches_b_within_a_second(
        self, launcher: DaemonLauncher, http: aiohttp.ClientSession
    ) -> None:
        """A key cached on A and B, revoked through A's admin API, is refused by B within 1 s."""
        a = await launcher.start(admin=ADMIN, server=QUICK_STOP)
        b = await launcher.start(server=QUICK_STOP)
        key = await launcher.create_key(SPACE)
        await wait_listener_up(b)
        await cached_on(http, a, key["key"])
        await cached_on(http, b, key["key"])

        await revoke_via_admin(http, a, key["id"])
        lag = await refusal_lag(http, b, key["key"], timeout=5.0)
        print(
            f"\nrevocation lag on B (revoke answered on A -> 401 on B): "
            f"{'never' if lag is None else f'{lag * 1000:.1f} ms'}"
        )
        assert await call(http, a, key["key"]) == 401, "the revoking process still admits it"
        assert lag is not None and lag <= REVOCATION_DEADLINE, (
            f"B admitted the revoked key for {lag} s (promise: {REVOCATION_DEADLINE} s)"
        )
        await assert_stays_refused(http, b, key["key"])
        lag_hist = metric_total(await scrape(http, b), "authproxy_revocation_lag_seconds_count")
        assert lag_hist >= 1, "B never observed the NOTIFY"

    async def test_revoke_after_pg_terminate_backend_within_five_seconds(
        self, launcher: DaemonLauncher, http: aiohttp.ClientSession, database_url: str
    ) -> None:
        """After every daemon connection is killed in PostgreSQL, a revoke through A is
        enforced on B within 5 s, and B's log shows its listener lost and up again."""
        a = await launcher.start(admin=ADMIN, server=QUICK_STOP)
        b = await launcher.start(server=QUICK_STOP)
        key = await launcher.create_key(SPACE)
        await wait_listener_up(b)
        await cached_on(http, b, key["key"])

        admin = await asyncpg.connect(database_url)
        try:
            killed = await admin.fetchval(TERMINATE_OTHERS)
        finally:
            await admin.close()
        assert killed >= 2, "expected at least A's and B's listener connections"
        await revoke_via_admin(http, a, key["id"])
        lag = await refusal_lag(http, b, key["key"], timeout=10.0)
        print(
            f"\nrevocation lag on B after pg_terminate_backend: "
            f"{'never' if lag is None else f'{lag * 1000:.1f} ms'} ({killed} backends killed)"
        )
        assert lag is not None and lag <= RECONNECT_REVOCATION_DEADLINE, (
            f"B admitted the revoked key for {lag} s after its listener was killed"
        )
        await assert_stays_refused(http, b, key["key"])

        async def cycled() -> bool:
            return listener_cycle(b.log_events()) is not None

        assert await wait_for(cycled, 5.0, 0.05) is not None, (
            f"B's log lacks listener up -> lost/down -> up; stderr:\n{b.stderr()}"
        )

    async def test_revoke_while_b_cannot_listen_is_enforced_after_reconnect(
        self, launcher: DaemonLauncher, http: aiohttp.ClientSession, database_url: str
    ) -> None:
        """B frozen (SIGSTOP) while its LISTEN connection is killed and the key revoked: the
        NOTIFY is lost to B, yet B refuses the key within 5 s of resuming (cache flush)."""
        a = await launcher.start(admin=ADMIN, server=QUICK_STOP)
        b = await launcher.start(server=QUICK_STOP)
        key = await launcher.create_key(SPACE)
        await wait_listener_up(b)
        await cached_on(http, b, key["key"])

        os.kill(b.pid, signal.SIGSTOP)
        try:
            admin = await asyncpg.connect(database_url)
            try:
                await admin.fetchval(TERMINATE_OTHERS)
            finally:
                await admin.close()
            await revoke_via_admin(http, a, key["id"])
        finally:
            os.kill(b.pid, signal.SIGCONT)
        lag = await refusal_lag(http, b, key["key"], timeout=10.0)
        print(
            f"\nrevocation lag on B, revoked while its listener was down: "
            f"{'never' if lag is None else f'{lag * 1000:.1f} ms'}"
        )
        assert lag is not None and lag <= RECONNECT_REVOCATION_DEADLINE
        await assert_stays_refused(http, b, key["key"])


async def rows_updated(database_url: str, timeout: float = 5.0) -> int:
    """api_keys' n_tup_upd once every other session of the database has ended (a backend
    publishes its table statistics when it exits)."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ):
            assert time.monotonic() < deadline, "the daemon's sessions did not end"
            await asyncio.sleep(0.05)
        updated: int = await conn.fetchval(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'api_keys'"
        )
        return updated
    finally:
        await conn.close()


class TestLastUsedBatching:
    async def test_uses_are_written_in_batches(
        self, launcher: DaemonLauncher, http: aiohttp.ClientSession, database_url: str
    ) -> None:
        """200 requests with 3 keys cost about one UPDATE per flush_interval, not one per
        request; last_used_at is set for every key and only moves forward."""
        interval = 0.5
        daemon = await launcher.start(usage={"flush_interval": interval}, server=QUICK_STOP)
        keys = [await launcher.create_key(SPACE, f"k{n}") for n in range(3)]
        before_use = datetime.now(UTC)

        started = time.monotonic()
        for n in range(200):
            assert await call(http, daemon, keys[n % 3]["key"]) == 200
            await asyncio.sleep(0.01)
        await asyncio.sleep(interval * 1.5)  # the last uses get their flush
        text = await scrape(http, daemon)
        elapsed = time.monotonic() - started
        flushes = metric_total(text, "authproxy_last_used_flush_keys_count")
        written = metric_total(text, "authproxy_last_used_flush_keys_sum")
        bound = elapsed / interval + 2
        print(
            f"\n200 requests in {elapsed:.2f} s: {flushes:.0f} last_used flushes "
            f"(bound {bound:.1f}), {written:.0f} key rows sent"
        )
        assert 2 <= flushes <= bound
        assert flushes <= written <= 3 * flushes

        listed = await list_keys(launcher)
        first = {k["id"]: last_used(listed[k["id"]]) for k in keys}
        for key_id, seen in first.items():
            assert seen is not None and seen >= before_use, f"{key_id}: {seen}"

        # More uses of one key: its last_used_at advances, the others stay put.
        again = datetime.now(UTC)
        for _ in range(5):
            assert await call(http, daemon, keys[0]["key"]) == 200
        advanced = await wait_last_used(launcher, keys[0]["id"], again)
        previous = first[keys[0]["id"]]
        assert previous is not None and advanced > previous
        listed = await list_keys(launcher)
        for k in keys[1:]:
            assert last_used(listed[k["id"]]) == first[k["id"]]

        text = await scrape(http, daemon)
        total_written = metric_total(text, "authproxy_last_used_flush_keys_sum")
        assert await daemon.stop() == 0
        # Independent of the daemon's own metrics: rows PostgreSQL saw updated.
        updated = await rows_updated(database_url)
        print(
            f"api_keys rows updated according to PostgreSQL: {updated} "
            f"(daemon reported {total_written:.0f} + at most 3 at shutdown)"
        )
        assert 3 <= updated <= total_written + 3

    async def test_sigterm_writes_pending_uses(
        self, launcher: DaemonLauncher, http: aiohttp.ClientSession
    ) -> None:
        """With flush_interval 3600, uses are still written by the shutdown flush (exit 0)."""
        daemon = await launcher.start(usage={"flush_interval": 3600}, server=QUICK_STOP)
        key = await launcher.create_key(SPACE)
        used_at = datetime.now(UTC)
        assert await call(http, daemon, key["key"]) == 200
        await asyncio.sleep(0.3)
        assert last_used((await list_keys(launcher))[key["id"]]) is None, "flushed early"
        assert await daemon.stop() == 0
        seen = last_used((await list_keys(launcher))[key["id"]])
        assert seen is not None and seen >= used_at

    async def test_many_waiting_keys_are_written_at_once(
        self, launcher: DaemonLauncher, http: aiohttp.ClientSession
    ) -> None:
        """With usage.max_pending 3 and an hour's interval, one key's use waits, and the
        use of a third key writes all three at once: the memory of waiting uses is bounded
        by max_pending, not by the keys used within an interval."""
        daemon = await launcher.start(
            usage={"flush_interval": 3600, "max_pending": 3}, server=QUICK_STOP
        )
        keys = [await launcher.create_key(SPACE, f"k{n}") for n in range(3)]
        used_at = datetime.now(UTC)
        assert await call(http, daemon, keys[0]["key"]) == 200
        assert await call(http, daemon, keys[1]["key"]) == 200
        await asyncio.sleep(0.3)
        assert last_used((await list_keys(launcher))[keys[0]["id"]]) is None, "flushed early"
        assert await call(http, daemon, keys[2]["key"]) == 200
        for key in keys:
            await wait_last_used(launcher, key["id"], used_at, timeout=5.0)
        text = await scrape(http, daemon)
        assert metric_total(text, "authproxy_last_used_flush_keys_sum") == 3
        assert await daemon.stop() == 0

    async def test_a_late_flush_never_moves_last_used_back(
        self, launcher: DaemonLauncher, http: aiohttp.ClientSession
    ) -> None:
        """X uses a key, then Y uses it and flushes; X's later shutdown flush of the older
        use leaves last_used_at at Y's newer time."""
        x = await launcher.start(usage={"flush_interval": 3600}, server=QUICK_STOP)
        y = await launcher.start(usage={"flush_interval": 0.2}, server=QUICK_STOP)
        shared = await launcher.create_key(SPACE, "shared")
        only_x = await launcher.create_key(SPACE, "only on x")
        x_used = datetime.now(UTC)
        assert await call(http, x, shared["key"]) == 200
        assert await call(http, x, only_x["key"]) == 200
        await asyncio.sleep(0.05)
        y_used = datetime.now(UTC)
        assert await call(http, y, shared["key"]) == 200
        newer = await wait_last_used(launcher, shared["id"], y_used)

        assert await x.stop() == 0
        listed = await list_keys(launcher)
        assert last_used(listed[shared["id"]]) == newer, "a late flush moved last_used_at back"
        written = last_used(listed[only_x["id"]])
        assert written is not None and x_used <= written < y_used, "X's flush did not run"


class TestPostgresOutage:
    async def test_cached_keys_work_unknown_keys_get_503_and_recovery(
        self,
        tmp_path: Path,
        private_pg: StoppablePostgres,
        upstream: Upstream,
        http: aiohttp.ClientSession,
    ) -> None:
        """PostgreSQL stopped: a recently verified key still gets 200, a never-seen key 503
        key_store_unavailable, readyz 503, healthz 200; after restart all recovers and the
        use made during the outage reaches last_used_at."""
        async with DaemonLauncher(
            tmp_path, database_url=private_pg.url, upstream_url=upstream.url
        ) as launcher:
            migrated = await launcher.cli("migrate")
            assert migrated.exit_code == 0, migrated.stderr
            k1 = await launcher.create_key(SPACE, "k1")
            k2 = await launcher.create_key(SPACE, "k2")
            daemon = await launcher.start(
                cache={"ttl": 1, "outage_grace": 300},
                db={"connect_timeout": 1, "query_timeout": 1},
                usage={"flush_interval": 0.5},
                server=QUICK_STOP,
            )
            assert await call(http, daemon, k1["key"]) == 200

            private_pg.stop()
            await asyncio.sleep(1.3)  # K1's entry is now past cache.ttl: stale
            outage_use = datetime.now(UTC)
            assert await call(http, daemon, k1["key"]) == 200, "cached key refused in outage"
            assert any(
                e.get("event") == "served_from_cache_during_outage" for e in daemon.log_events()
            ), "K1 was not a stale entry re-checked"
            for _ in range(3):
                status, body = await get_json(http, daemon.url("/api/v1/points"), bearer(k2["key"]))
                assert status == 503, (status, body)
                assert body["error"]["code"] == "key_store_unavailable"
            status, body = await get_json(http, daemon.url(READYZ))
            assert status == 503, body
            status, _ = await get_json(http, daemon.url(HEALTHZ))
            assert status == 200
            assert await call(http, daemon, k1["key"]) == 200

            private_pg.restart()
            restarted = time.monotonic()

            async def ready() -> bool:
                return (await get_json(http, daemon.url(READYZ)))[0] == 200

            assert await wait_for(ready, 10.0, 0.1) is not None, "readyz stayed 503"

            async def k2_admitted() -> bool:
                status = await call(http, daemon, k2["key"])
                assert status in (200, 503), f"unknown key got {status} during recovery"
                return status == 200

            assert await wait_for(k2_admitted, 10.0, 0.1) is not None
            print(f"\nrecovered {time.monotonic() - restarted:.2f} s after PostgreSQL restart")
            await wait_last_used(launcher, k1["id"], outage_use)
            assert await daemon.stop() == 0

    async def test_failed_flushes_wait_for_the_interval(
        self,
        tmp_path: Path,
        private_pg: StoppablePostgres,
        upstream: Upstream,
        http: aiohttp.ClientSession,
    ) -> None:
        """PostgreSQL stopped with more than usage.max_pending keys' uses waiting: the
        flush is retried every flush_interval, not in a loop, and the uses still reach
        last_used_at after the restart."""
        async with DaemonLauncher(
            tmp_path, database_url=private_pg.url, upstream_url=upstream.url
        ) as launcher:
            migrated = await launcher.cli("migrate")
            assert migrated.exit_code == 0, migrated.stderr
            key = await launcher.create_key(SPACE, "k1")
            daemon = await launcher.start(
                cache={"ttl": 60, "outage_grace": 300},
                db={"connect_timeout": 1, "query_timeout": 1},
                usage={"flush_interval": 1.0, "max_pending": 1},
                server=QUICK_STOP,
            )
            assert await call(http, daemon, key["key"]) == 200  # cached now
            private_pg.stop()
            outage_use = datetime.now(UTC)
            assert await call(http, daemon, key["key"]) == 200  # 1 key waits: flush due
            await asyncio.sleep(3.5)
            failures = metric_total(
                await scrape(http, daemon), "authproxy_last_used_flush_failures_total"
            )
            print(f"\n{failures:.0f} failed last_used flushes in 3.5 s of outage")
            assert 1 <= failures <= 6
            private_pg.restart()
            await wait_last_used(launcher, key["id"], outage_use, timeout=15.0)
            assert await daemon.stop() == 0


class TestGracefulShutdown:
    async def test_sigterm_drains_then_stops(
        self, launcher: DaemonLauncher, upstream: Upstream, fresh_http: aiohttp.ClientSession
    ) -> None:
        """SIGTERM: readyz 503 at once while new requests still get 200 during drain_delay;
        the in-flight slow request completes with 200; exit code 0."""
        daemon = await launcher.start(server={"drain_delay": 1.0, "shutdown_timeout": 5})
        key = await launcher.create_key(SPACE)
        assert await call(fresh_http, daemon, key["key"]) == 200

        slow = asyncio.create_task(
            get_json(fresh_http, daemon.url("/slow/1.5"), bearer(key["key"]))
        )

        async def in_flight() -> bool:
            return any(r.raw_path == "/slow/1.5" for r in upstream.requests)

        assert await wait_for(in_flight, 5.0) is not None
        daemon.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        async def draining() -> bool:
            return (await get_json(fresh_http, daemon.url(READYZ)))[0] == 503

        assert await wait_for(draining, 0.5, 0.01) is not None, "readyz not 503 after SIGTERM"
        assert await call(fresh_http, daemon, key["key"]) == 200
        # Half-way through the drain delay: still not ready, still serving new connections.
        await asyncio.sleep(max(0.0, signalled + 0.5 - time.monotonic()))
        assert (await get_json(fresh_http, daemon.url(READYZ)))[0] == 503
        assert await call(fresh_http, daemon, key["key"]) == 200
        assert time.monotonic() - signalled < 1.0, "checks ran past the drain delay"

        status, body = await slow
        assert (status, body) == (200, {"slept": True})
        assert await daemon.wait_exit(10.0) == 0, daemon.stderr()


class Supervised:
    """A ``serve --workers N`` supervisor process and the workers it runs."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.parent = psutil.Process(daemon.pid)
        self.host = "127.0.0.1"
        self.port = int(daemon.base_url.rpartition(":")[2])
        self.seen: set[int] = set()

    def children(self) -> list[int]:
        pids = [c.pid for c in self.parent.children()]
        self.seen.update(pids)
        return pids

    async def workers(self, count: int = 2, exclude: tuple[int, ...] = ()) -> list[int]:
        """The workers once ``count`` of them (none in ``exclude``) listen on the port."""
        found: list[int] = []

        async def ready() -> bool:
            found[:] = self.children()
            return (
                len(found) == count
                and not set(found) & set(exclude)
                and listening_pids(found, self.port) == set(found)
            )

        assert await wait_for(ready, 20.0, 0.05) is not None, (
            f"workers {found} not all listening; stderr:\n{self.daemon.stderr()}"
        )
        return list(found)

    def worker_died_logged(self, pid: int) -> bool:
        return any(
            e.get("event") == "worker_died" and e.get("pid") == pid
            for e in self.daemon.log_events()
        )

    def kill_leftovers(self) -> None:
        """SIGKILL every worker this supervisor ever had that is still running."""
        for pid in self.seen:
            try:
                process = psutil.Process(pid)
                if (
                    process.ppid() in (self.daemon.pid, 1)
                    and process.status() != psutil.STATUS_ZOMBIE
                ):
                    process.kill()
            except psutil.Error:
                pass


async def wait_dead(pid: int, timeout: float = 5.0) -> None:
    """Until the kernel has torn a killed process down, its listening socket may still take
    a connection and then reset it: no daemon can answer from a dead process."""

    async def gone() -> bool:
        try:
            return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return True

    assert await wait_for(gone, timeout, 0.005) is not None, f"{pid} survived SIGKILL"


@pytest.fixture
async def supervised(launcher: DaemonLauncher) -> AsyncIterator[Supervised]:
    daemon = await launcher.start(server={"workers": 2, "drain_delay": 0.2, "shutdown_timeout": 2})
    fleet = Supervised(daemon)
    try:
        yield fleet
    finally:
        with contextlib.suppress(psutil.Error):
            fleet.children()
        await daemon.stop(timeout=20.0)
        fleet.kill_leftovers()


class TestWorkers:
    async def test_supervised_workers(
        self,
        launcher: DaemonLauncher,
        supervised: Supervised,
        http: aiohttp.ClientSession,
        fresh_http: aiohttp.ClientSession,
    ) -> None:
        """`serve` with 2 workers: a killed worker is replaced while requests succeed, a
        revoke reaches both workers within 1 s, metrics add up across workers, SIGTERM
        stops all with exit 0."""
        supervisor = supervised.daemon
        key = await launcher.create_key(SPACE)
        sent = 0

        async def proxied_ok() -> None:
            nonlocal sent
            try:
                status = await call(fresh_http, supervisor, key["key"])
            except aiohttp.ClientError as exc:
                children = supervised.children()
                pytest.fail(
                    f"{exc!r}; workers {children}, listening "
                    f"{listening_pids(children, supervised.port)}; stderr:\n"
                    f"{supervisor.stderr()}"
                )
            sent += 1
            assert status == 200, [
                e for e in supervisor.log_events() if e.get("event", "").startswith("upstream")
            ]

        first = await supervised.workers()
        for _ in range(10):
            await proxied_ok()

        victim, survivor = first
        # A worker counts a request just after sending its response: let the last one be
        # counted before the kill, so the merged total can be checked exactly below.
        await asyncio.sleep(0.2)
        os.kill(victim, signal.SIGKILL)
        await wait_dead(victim)

        async def replaced() -> bool:
            await proxied_ok()
            fresh = [p for p in supervised.children() if p not in first]
            return bool(fresh) and listening_pids(fresh, supervised.port) == set(fresh)

        assert await wait_for(replaced, 20.0, 0.05) is not None, (
            f"no replacement worker; stderr:\n{supervisor.stderr()}"
        )
        current = await supervised.workers(exclude=(victim,))
        assert survivor in current
        print(f"\nworker {victim} killed, replaced by {set(current) - {survivor}}")

        # One keep-alive connection per worker: the key is cached in both processes.
        clients: list[KeepAliveClient] = [
            await connect_to(pid, current, supervised.host, supervised.port) for pid in current
        ]
        try:
            for client in clients:
                for _ in range(2):
                    assert (await client.get("/api", bearer(key["key"]))).status == 200
                    sent += 1
            revoked = await launcher.cli("keys", "revoke", "--space", SPACE, key["id"])
            assert revoked.exit_code == 0, revoked.stderr
            started = time.monotonic()
            lags: dict[int, float] = {}
            while len(lags) < len(clients) and time.monotonic() - started < 5.0:
                for pid, client in zip(current, clients, strict=True):
                    if pid in lags:
                        continue
                    reply = await client.get("/api", bearer(key["key"]))
                    sent += 1
                    assert reply.status in (200, 401)
                    if reply.status == 401:
                        lags[pid] = time.monotonic() - started
                await asyncio.sleep(0.02)
            print(
                "revocation lag per worker (CLI revoke returned -> 401): "
                + ", ".join(f"{pid}: {lag * 1000:.1f} ms" for pid, lag in lags.items())
            )
            assert set(lags) == set(current), f"not refused by every worker: {lags}"
            assert max(lags.values()) <= REVOCATION_DEADLINE
        finally:
            for client in clients:
                await client.close()

        async def merged() -> bool:
            total = metric_total(await scrape(http, supervisor), "authproxy_requests_total")
            return total == sent

        if await wait_for(merged, 2.0, 0.1) is None:
            total = metric_total(await scrape(http, supervisor), "authproxy_requests_total")
            pytest.fail(f"authproxy_requests_total is {total}, {sent} requests were sent")
        print(f"authproxy_requests_total = {sent} across workers (incl. the killed one)")

        assert await supervisor.stop(timeout=20.0) == 0, supervisor.stderr()
        for pid in current:
            assert (
                not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            ), f"worker {pid} outlived the supervisor"

    async def test_sigterm_during_a_restart_backoff_stops_cleanly(
        self, supervised: Supervised
    ) -> None:
        """SIGTERM while the supervisor waits to restart a crashed worker: every worker
        stops within drain_delay + shutdown_timeout, none is started, exit code 0."""
        supervisor = supervised.daemon
        victim, _ = await supervised.workers()
        os.kill(victim, signal.SIGKILL)  # it lived < 5 s: the restart waits 0.5 s first

        async def died_logged() -> bool:
            return supervised.worker_died_logged(victim)

        assert await wait_for(died_logged, 5.0, 0.01) is not None
        supervisor.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        code = await supervisor.wait_exit(0.2 + 2 + 3)
        took = time.monotonic() - signalled
        started_after = [
            e["pid"] for e in supervisor.log_events() if e.get("event") == "worker_started"
        ][2:]
        assert code == 0, (
            f"supervisor exit code {code} {took:.1f} s after SIGTERM; workers started after "
            f"the crash: {started_after}; stderr:\n{supervisor.stderr()}"
        )
