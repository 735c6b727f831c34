"""Abuse limits: per-client failure throttling, per-key rate limits, bounded argon2 queue."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from authproxy.app import COMPONENTS, create_app
from authproxy.auth.limits import FailureLimiter, KeyRateLimiter, seconds_header
from authproxy.keys.audit import AuditContext
from authproxy.keys.format import KeyHasher, generate_key
from tests.conftest import AppClient, MakeConfig, Upstream, bearer, new_key
from tests.fleet import metric_total
from tests.test_revocation import GatedHasher, wait_for

Client = TestClient[Any, Any]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestFailureLimiter:
    def test_blocks_after_threshold_until_window_ends(self) -> None:
        """The threshold-th failure blocks the client for the rest of the window."""
        clock = FakeClock()
        limiter = FailureLimiter(threshold=3, window=60, max_clients=10, clock=clock)
        for _ in range(2):
            limiter.record_failure("a")
        assert limiter.retry_after("a") is None
        limiter.record_failure("a")
        clock.now += 10
        assert limiter.retry_after("a") == pytest.approx(50)
        assert limiter.retry_after("b") is None
        clock.now += 50
        assert limiter.retry_after("a") is None

    def test_memory_is_bounded(self) -> None:
        """Tracking a million addresses keeps only max_clients of them."""
        limiter = FailureLimiter(threshold=3, window=60, max_clients=1000, clock=FakeClock())
        for i in range(100_000):
            limiter.record_failure(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
        assert len(limiter) == 1000

    def test_threshold_zero_disables(self) -> None:
        """threshold 0 never blocks and tracks nothing."""
        limiter = FailureLimiter(threshold=0, window=60, max_clients=10, clock=FakeClock())
        for _ in range(100):
            limiter.record_failure("a")
        assert limiter.retry_after("a") is None and len(limiter) == 0


class TestKeyRateLimiter:
    def test_token_bucket(self) -> None:
        """Rate 2/s with 1 s of burst: two at once, then one per half second."""
        clock = FakeClock()
        limiter = KeyRateLimiter(burst_seconds=1.0, max_keys=10, clock=clock)
        first, second, third = (limiter.take("k", 2.0) for _ in range(3))
        assert first.allowed and second.allowed and not third.allowed
        assert third.retry_after == pytest.approx(0.5)
        assert (first.limit, first.remaining, second.remaining) == (2, 1, 0)
        clock.now += 0.5
        assert limiter.take("k", 2.0).allowed
        assert limiter.take("other", 2.0).allowed

    def test_seconds_header_rounds_up(self) -> None:
        """Waits are whole seconds, and never 0."""
        assert [seconds_header(s) for s in (0.0, 0.2, 1.0, 1.01)] == ["1", "1", "1", "2"]


class TestThrottlingThroughTheProxy:
    async def test_repeated_failures_get_429(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """After the threshold, the address gets 429 + Retry-After, even with a good key."""
        client = await app_client(limits={"failure_threshold": 3, "failure_window": 60})
        good = await new_key(client)
        for _ in range(3):
            assert (await client.get("/x", headers=bearer(generate_key().full))).status == 401
        resp = await client.get("/x", headers=bearer(good.key))
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["error"]["code"] == "too_many_failures"
        assert upstream.requests == []

    async def test_missing_credentials_do_not_count(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """Requests without any credential are 401 but do not throttle the address."""
        client = await app_client(limits={"failure_threshold": 2})
        for _ in range(5):
            assert (await client.get("/x")).status == 401
        good = await new_key(client)
        assert (await client.get("/x", headers=bearer(good.key))).status == 200


async def argon2_count(client: Client) -> float:
    text = await (await client.get("/_authproxy/metrics")).text()
    return metric_total(text, "authproxy_argon2_verifications_total")


class TestNoLockout:
    """Issue 18: many integrations behind one NAT address. The failure limit protects
    PostgreSQL and argon2; it never refuses a key already verified in the cache."""

    async def test_valid_cached_key_passes_after_a_flood_of_bad_keys(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """Hundreds of bad keys from one address: its verified key still gets 200 at once;
        an unknown well-formed key from it gets 429 (it would cost a query and argon2)."""
        client = await app_client(limits={"failure_threshold": 20, "failure_window": 60})
        good = await new_key(client)
        assert (await client.get("/x", headers=bearer(good.key))).status == 200  # verified
        statuses = [
            (await client.get("/x", headers=bearer(generate_key().full))).status for _ in range(300)
        ]
        assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
        argon2_before = await argon2_count(client)
        upstream.requests.clear()
        assert (await client.get("/x", headers=bearer(good.key))).status == 200
        assert len(upstream.requests) == 1
        unknown = await client.get("/x", headers=bearer(generate_key().full))
        assert unknown.status == 429
        assert (await unknown.json())["error"]["code"] == "too_many_failures"
        assert int(unknown.headers["Retry-After"]) >= 1
        never_used = await new_key(client)  # valid, but never verified here: costs argon2
        assert (await client.get("/x", headers=bearer(never_used.key))).status == 429
        assert await argon2_count(client) == argon2_before  # the throttled address cost none
        assert len(upstream.requests) == 1

    async def test_junk_costs_nothing_and_is_401_not_429(self, app_client: AppClient) -> None:
        """A throttled address still learns that junk is junk: a malformed key or a bad
        checksum never costs a query, so it is not what the limit protects against."""
        client = await app_client(limits={"failure_threshold": 3})
        for _ in range(3):
            await client.get("/x", headers=bearer(generate_key().full))
        for key in ("asc_short", "asc_" + "A" * 44):  # malformed; a bad checksum
            assert (await client.get("/x", headers=bearer(key))).status == 401

    async def test_stale_cached_key_is_rechecked_not_refused(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """A verified key past cache.ttl costs one query to re-check (no argon2): the
        throttled address's valid key still gets 200."""
        client = await app_client(
            limits={"failure_threshold": 3}, cache={"ttl": 0.2, "outage_grace": 300}
        )
        good = await new_key(client)
        assert (await client.get("/x", headers=bearer(good.key))).status == 200
        for _ in range(5):
            await client.get("/x", headers=bearer(generate_key().full))
        await asyncio.sleep(0.3)  # stale now
        assert (await client.get("/x", headers=bearer(good.key))).status == 200


class TestKeyRateLimit:
    async def test_per_key_override_gives_429_with_ratelimit_headers(
        self, client: Client, upstream: Upstream
    ) -> None:
        """A key created with rate 2/s: the third immediate request is 429 with headers."""
        keys = client.app[COMPONENTS].keys
        created = await keys.create(
            space_id="plant-7", name="slow", rate_limit=2, audit=AuditContext(actor="test")
        )
        assert created.record.rate_limit_per_second == 2
        first = await client.get("/x", headers=bearer(created.key))
        assert first.status == 200
        assert first.headers["RateLimit-Limit"] == "2"
        assert first.headers["RateLimit-Remaining"] == "1"
        await client.get("/x", headers=bearer(created.key))
        third = await client.get("/x", headers=bearer(created.key))
        assert third.status == 429
        assert third.headers["Retry-After"] == "1"
        assert third.headers["RateLimit-Remaining"] == "0"
        assert (await third.json())["error"]["code"] == "rate_limited"
        assert len(upstream.requests) == 2
        other = await new_key(client)
        assert (await client.get("/x", headers=bearer(other.key))).status == 200

    async def test_default_rate_from_config(
        self, app_client: AppClient, upstream: Upstream
    ) -> None:
        """limits.key_rate_per_second applies to keys without their own rate."""
        client = await app_client(limits={"key_rate_per_second": 1})
        created = await new_key(client)
        statuses = [(await client.get("/x", headers=bearer(created.key))).status for _ in range(3)]
        assert statuses == [200, 429, 429]

    @pytest.mark.parametrize("rate", [0, -1, "5", True, 10_000_001])
    async def test_bad_rate_is_rejected(self, client: Client, rate: Any) -> None:
        """The per-key rate must be a number above 0 and at most 1,000,000."""
        from authproxy.errors import InvalidInput

        with pytest.raises(InvalidInput):
            await client.app[COMPONENTS].keys.create(
                space_id="plant-7", name="k", rate_limit=rate, audit=AuditContext(actor="test")
            )


class TestArgon2Queue:
    async def test_flood_of_misses_cannot_starve_cached_keys(
        self,
        make_config: MakeConfig,
        hasher: KeyHasher,
        upstream: Upstream,
        aiohttp_client: Callable[..., Awaitable[Client]],
    ) -> None:
        """With the argon2 queue full, new misses get 503 at once; cached keys still pass."""
        gated = GatedHasher(hasher)
        gated.gate.set()
        cfg = make_config(
            hashing={"max_concurrency": 1, "max_pending": 2}, limits={"failure_threshold": 0}
        )
        client = await aiohttp_client(create_app(cfg, hasher=gated))
        # The listener's first LISTEN flushes the cache; let that happen before caching.
        await wait_for(client.app[COMPONENTS].listener.connected.is_set)
        cached = await new_key(client)
        assert (await client.get("/x", headers=bearer(cached.key))).status == 200
        gated.gate.clear()
        stuck = [
            asyncio.create_task(client.get("/x", headers=bearer(generate_key().full)))
            for _ in range(2)
        ]
        await wait_for(gated.entered.is_set)
        # Both misses running or queued before the third is sent: on a loaded machine the
        # third request could otherwise overtake the second (found by CI).
        authenticator = client.app[COMPONENTS].authenticator
        await wait_for(lambda: authenticator._pending == 2)
        overflow = await client.get("/x", headers=bearer(generate_key().full))
        assert overflow.status == 503
        assert overflow.headers["Retry-After"] == "1"
        assert (await overflow.json())["error"]["code"] == "overloaded"
        assert (await client.get("/x", headers=bearer(cached.key))).status == 200
        gated.gate.set()
        assert [(await t).status for t in stuck] == [401, 401]
