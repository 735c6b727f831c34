"""Revocation inside one process: the lookup race, the listener, and the metrics it feeds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from authproxy.app import COMPONENTS, create_app
from authproxy.auth.revocations import parse_notification
from authproxy.keys.audit import AuditContext
from authproxy.keys.format import KeyHasher
from tests.conftest import MakeConfig, Upstream, bearer, new_key

Client = TestClient[Any, Any]
AiohttpClient = Callable[..., Awaitable[Client]]


class GatedHasher(KeyHasher):
    """Verification waits at a gate, so a test can revoke while a lookup is in flight.

    Everything is handed to ``inner`` through KeyHasher's public methods (a KeyHasher only
    so create_app accepts it); KeyHasher.__init__ is not called, so a method added to
    KeyHasher and not delegated here fails loudly instead of hashing some other way.
    """

    def __init__(self, inner: KeyHasher) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.gate = threading.Event()

    def hash(self, secret: str) -> str:
        return self.inner.hash(secret)

    def verify(self, stored_hash: str, secret: str) -> bool:
        self.entered.set()
        self.gate.wait(timeout=10)
        return self.inner.verify(stored_hash, secret)

    def should_rehash(self, stored_hash: str) -> bool:
        return self.inner.should_rehash(stored_hash)


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class TestRevokeDuringLookup:
    async def test_in_flight_lookup_cannot_recache_revoked_key(
        self,
        make_config: MakeConfig,
        hasher: KeyHasher,
        upstream: Upstream,
        aiohttp_client: AiohttpClient,
    ) -> None:
        """A lookup that read the key before a revoke does not put it back in the cache."""
        gated = GatedHasher(hasher)
        gated.gate.set()
        client = await aiohttp_client(create_app(make_config(), hasher=gated))
        await wait_for(client.app[COMPONENTS].listener.connected.is_set)
        created = await new_key(client)
        gated.gate.clear()
        gated.entered.clear()
        in_flight = asyncio.create_task(client.get("/x", headers=bearer(created.key)))
        await wait_for(gated.entered.is_set)  # the record was read: the key was active then
        await client.app[COMPONENTS].keys.revoke(
            space_id="plant-7", key_id=created.record.id, audit=AuditContext(actor="test")
        )
        gated.gate.set()
        await (await in_flight).release()
        assert len(client.app[COMPONENTS].cache) == 0
        upstream.requests.clear()
        resp = await client.get("/x", headers=bearer(created.key))
        assert resp.status == 401
        assert upstream.requests == []


class TestRevokeDuringOutage:
    async def test_a_revoke_during_the_recheck_of_a_stale_key_wins(
        self, app_client: Any, database_url: str, upstream: Upstream
    ) -> None:
        """A stale cached key is being re-checked, PostgreSQL does not answer in time, and
        the key's revocation arrives meanwhile: the answer is 503, not the cached 200."""
        client = await app_client(
            cache={"ttl": 0.2, "outage_grace": 300}, db={"query_timeout": 1.0}
        )
        created = await new_key(client)
        assert (await client.get("/x", headers=bearer(created.key))).status == 200
        await asyncio.sleep(0.3)  # past cache.ttl: the next use asks PostgreSQL again
        locker = await asyncpg.connect(database_url)
        try:
            transaction = locker.transaction()
            await transaction.start()
            # The re-check's SELECT waits behind this lock until query_timeout.
            await locker.execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
            request = asyncio.create_task(client.get("/x", headers=bearer(created.key)))
            await asyncio.sleep(0.3)
            # What the revocation listener does when the NOTIFY of a revoke arrives.
            client.app[COMPONENTS].cache.invalidate_key(created.record.id)
            response = await request
            await transaction.rollback()
        finally:
            await locker.close()
        assert response.status == 503
        assert (await response.json())["error"]["code"] == "key_store_unavailable"
        upstream.requests.clear()
        # And once PostgreSQL answers, the key is looked up afresh (not revoked in the
        # database here: the test stood in for a NOTIFY).
        assert (await client.get("/x", headers=bearer(created.key))).status == 200


class TestListener:
    async def test_reconnect_flushes_cache(self, client: Client, database_url: str) -> None:
        """Killing the LISTEN connection leads to a reconnect that empties the cache."""
        listener = client.app[COMPONENTS].listener
        await wait_for(listener.connected.is_set)
        created = await new_key(client)
        assert (await client.get("/x", headers=bearer(created.key))).status == 200
        assert len(client.app[COMPONENTS].cache) == 1
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        await wait_for(lambda: listener.connections >= 2)
        assert len(client.app[COMPONENTS].cache) == 0
        assert (await client.get("/x", headers=bearer(created.key))).status == 200

    async def test_revoke_elsewhere_evicts_here(
        self, app_client: Any, make_config: MakeConfig
    ) -> None:
        """A revoke through another app on the same database refuses the key here within a
        second, though it is cached here; the cached entry is counted as evicted."""
        here = await app_client()
        there = await app_client()
        for app_client_ in (here, there):
            await wait_for(app_client_.app[COMPONENTS].listener.connected.is_set)
        created = await new_key(here)
        assert (await here.get("/x", headers=bearer(created.key))).status == 200
        assert len(here.app[COMPONENTS].cache) == 1
        await there.app[COMPONENTS].keys.revoke(
            space_id="plant-7", key_id=created.record.id, audit=AuditContext(actor="test")
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while (await here.get("/x", headers=bearer(created.key))).status == 200:
            assert loop.time() < deadline, "still admitted a second after the revoke"
            await asyncio.sleep(0.01)
        assert (await here.get("/x", headers=bearer(created.key))).status == 401
        metrics = await (await here.get("/_authproxy/metrics")).text()
        assert 'authproxy_cache_evictions_total{reason="revoked"} 1.0' in metrics


class TestNotificationPayload:
    def test_parse(self) -> None:
        """'<id>|<epoch>' gives both; a bare id or a junk time gives no time."""
        assert parse_notification("k1|1700000000.25") == ("k1", 1700000000.25)
        assert parse_notification("k1") == ("k1", None)
        assert parse_notification("k1|soon") == ("k1", None)


class TestMetrics:
    async def test_metrics_endpoint_names_what_the_issue_asks(
        self, client: Client, upstream: Upstream
    ) -> None:
        """/_authproxy/metrics exposes outcomes, latencies, cache, argon2, upstream, flushes."""
        created = await new_key(client)
        await client.get("/x", headers=bearer(created.key))
        await client.get("/x", headers=bearer(created.key))
        await client.get("/x")
        await client.get("/x", headers=bearer("asc_" + "A" * 44))
        await client.app[COMPONENTS].keys.revoke(
            space_id="plant-7", key_id=created.record.id, audit=AuditContext(actor="test")
        )
        text = ""
        for _ in range(100):  # until the NOTIFY and a last_used flush (0.1 s) have happened
            resp = await client.get("/_authproxy/metrics")
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            text = await resp.text()
            if (
                "authproxy_revocation_lag_seconds_count 1.0" in text
                and "authproxy_last_used_flush_keys_count 0.0" not in text
            ):
                break
            await asyncio.sleep(0.05)
        for needle in (
            'authproxy_requests_total{outcome="allowed",status="200"} 2.0',
            'authproxy_requests_total{outcome="missing",status="401"} 1.0',
            'authproxy_requests_total{outcome="invalid",status="401"} 1.0',
            "authproxy_auth_duration_seconds_bucket",
            "authproxy_cache_hits_total 1.0",
            "authproxy_cache_misses_total 1.0",
            'authproxy_argon2_verifications_total{result="match"} 1.0',
            "authproxy_argon2_duration_seconds_count 1.0",
            "authproxy_upstream_duration_seconds_count 2.0",
            "authproxy_revocation_lag_seconds_count 1.0",
            "authproxy_last_used_flush_keys_count",
            "authproxy_last_used_flush_lag_seconds_count",
            'authproxy_db_pool_connections{state="in_use"}',
        ):
            assert needle in text, needle
        assert created.key not in text and created.record.id not in text
