"""When authproxy spends argon2, counted from its own metric.

* Many connections presenting one new key at once: one verification (single flight).
* A stale cache entry is re-checked against the database; argon2 only when the stored hash
  moved. The cache keeps a fingerprint of the hash it verified against, not the hash.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from authproxy.keys.format import KeyHasher, generate_key, parse_key
from tests.conftest import AppClient, bearer, new_key
from tests.keyforge import forge_key

Client = TestClient[Any, Any]
TTL = 0.3


async def argon2_runs(client: Client, result: str = "match") -> float:
    text = await (await client.get("/_authproxy/metrics")).text()
    name = f'authproxy_argon2_verifications_total{{result="{result}"}} '
    found = re.search(re.escape(name) + r"([0-9.]+)", text)
    return float(found.group(1)) if found else 0.0


async def test_concurrent_first_uses_of_one_key_cost_one_argon2(client: Client) -> None:
    created = await new_key(client)
    answers = await asyncio.gather(
        *(client.get(f"/x/{n}", headers=bearer(created.key)) for n in range(20))
    )
    assert [r.status for r in answers] == [200] * 20
    assert await argon2_runs(client) == 1


async def test_concurrent_wrong_secret_costs_one_argon2(client: Client) -> None:
    created = await new_key(client)
    # Same lookup id, another secret, a valid checksum: only argon2 can tell.
    wrong = forge_key(created.record.lookup_id, generate_key().parsed.secret)
    answers = await asyncio.gather(*(client.get("/x", headers=bearer(wrong)) for _ in range(20)))
    assert {r.status for r in answers} == {401}
    assert await argon2_runs(client, "mismatch") == 1


async def test_stale_entry_costs_argon2_only_after_the_hash_changed(
    app_client: AppClient, database_url: str, hasher: KeyHasher
) -> None:
    client = await app_client(cache={"ttl": TTL, "outage_grace": 60})
    created = await new_key(client)
    assert (await client.get("/x", headers=bearer(created.key))).status == 200
    assert await argon2_runs(client) == 1

    await asyncio.sleep(TTL + 0.1)  # stale: re-checked, same hash, no argon2
    assert (await client.get("/x", headers=bearer(created.key))).status == 200
    assert await argon2_runs(client) == 1

    conn = await asyncpg.connect(database_url)
    try:  # what a rehash does: a new hash of the same secret
        await conn.execute(
            "UPDATE api_keys SET secret_hash = $1 WHERE id = $2",
            hasher.hash(parse_key(created.key).secret),
            created.record.id,
        )
    finally:
        await conn.close()
    await asyncio.sleep(TTL + 0.1)
    assert (await client.get("/x", headers=bearer(created.key))).status == 200
    assert await argon2_runs(client) == 2
