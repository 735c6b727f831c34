"""API keys in the scratch database: one through the CLI, many through KeyService."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import asyncpg

from authproxy.auth.cache import VerifiedKeyCache
from authproxy.auth.verdict import VerdictCodec
from authproxy.config.schema import HashingConfig
from authproxy.keys.audit import AuditContext
from authproxy.keys.format import KeyHasher
from authproxy.keys.service import KeyService
from authproxy.keys.store import Store
from bench.lab.database import authproxy_cli

SPACE = "bench"


@dataclass(frozen=True)
class CreatedKey:
    """What `authproxy keys create` prints: the key and its record's ids."""

    key: str = field(repr=False)  # out of repr, as authproxy's own CreatedKey
    id: str
    space_id: str
    prefix: str


def create_key(db_url: str, name: str) -> CreatedKey:
    """One key in SPACE through `authproxy keys create` (shipped argon2 parameters)."""
    created = json.loads(authproxy_cli(db_url, "keys", "create", "--space", SPACE, "--name", name))
    return CreatedKey(
        key=created["key"], id=created["id"], space_id=created["space_id"], prefix=created["prefix"]
    )


def hashing_config(cheap: bool) -> HashingConfig:
    # cheap: the smallest argon2id the config accepts; only for filling caches quickly.
    return HashingConfig(time_cost=1, memory_cost_kib=8) if cheap else HashingConfig()


async def bulk_create_keys(
    db_url: str, n: int, *, cheap_hashing: bool = False, concurrency: int = 8
) -> list[str]:
    """n keys in space SPACE through authproxy's own KeyService (argon2 in 2 threads)."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=concurrency)
    try:
        with ThreadPoolExecutor(max_workers=2) as executor:
            service = KeyService(
                store=Store(pool),
                executor=executor,
                hasher=KeyHasher.from_config(hashing_config(cheap_hashing)),
                cache=VerifiedKeyCache(max_entries=0, codec=VerdictCodec()),
            )
            audit = AuditContext(actor="bench")
            keys: list[str] = []
            gate = asyncio.Semaphore(concurrency)

            async def one(i: int) -> None:
                async with gate:
                    created = await service.create(space_id=SPACE, name=f"k{i}", audit=audit)
                    keys.append(created.key)

            await asyncio.gather(*(one(i) for i in range(n)))
            return keys
    finally:
        await pool.close()
