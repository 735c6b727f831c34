#!/usr/bin/env python3
"""Benchmark: what PgBouncer (transaction pooling) costs a cache miss, against direct.

Three ways to one PostgreSQL: direct with asyncpg's statement cache (the default),
direct without it (db.pooler: transaction: what the pooler settings alone cost), and
through Debian's pgbouncer (pool_mode = transaction, db.listen_url direct). For each:
  - key lookups/s: authproxy's own Store.find_by_lookup_id, 8 at once, in this process
    (the database part of a miss, nothing else);
  - cache misses/s: a daemon with its cache off (every request is a lookup plus an
    argon2 verification with the shipped parameters), 16 requests at once.

    python bench/pooler.py              # 5 s per measurement
    python bench/pooler.py --short      # CI: 1 s each

PostgreSQL: $AUTHPROXY_TEST_DATABASE_URL (a scratch database is created and dropped) or
an embedded one. Prints numbers; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

if not __package__:  # `python bench/pooler.py` puts bench/ on sys.path, not the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from authproxy.config.schema import Config, DbConfig, PoolerMode
from authproxy.db.pool import create_pool
from authproxy.keys.store import Store
from bench.lab.daemons import NO_FAILURE_LIMIT, start_authproxy
from bench.lab.database import run_in_lab
from bench.lab.keys import bulk_create_keys
from bench.lab.pgbouncer import PgBouncer
from bench.lab.probes import ok, wait_up
from bench.lab.processes import Lab
from bench.revocation_lag import start_upstream

KEYS = 32
LOOKUP_CONCURRENCY = 8
MISS_CONCURRENCY = 16
CACHE_OFF = "cache: {max_entries: 0}\n"


async def lookup_rate(
    url: str, listen_url: str | None, pooler: PoolerMode, seconds: float
) -> float:
    """Store.find_by_lookup_id calls per second, LOOKUP_CONCURRENCY at once."""
    db = DbConfig(url=url, listen_url=listen_url, pooler=pooler, max_pool=LOOKUP_CONCURRENCY)
    pool = await create_pool(Config(db=db))
    store = Store(pool)
    try:
        async with pool.acquire() as conn:
            lookup_ids = [r[0] for r in await conn.fetch("SELECT lookup_id FROM api_keys")]
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done
            i = offset
            while time.perf_counter() < deadline:
                assert await store.find_by_lookup_id(lookup_ids[i % len(lookup_ids)])
                done, i = done + 1, i + LOOKUP_CONCURRENCY

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(LOOKUP_CONCURRENCY)))
        return done / (time.perf_counter() - started)
    finally:
        await pool.close()


async def miss_rate(base: str, keys: list[str], seconds: float) -> tuple[float, int]:
    """(cache misses answered 200 per second, answers that were not 200)."""
    done = failed = 0
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession() as session:

        async def worker(offset: int) -> None:
            nonlocal done, failed
            i = offset
            while time.perf_counter() < deadline:
                auth = {"Authorization": f"Bearer {keys[i % len(keys)]}"}
                async with session.get(base + "/x", headers=auth) as resp:
                    await resp.read()
                    done, failed = done + (resp.status == 200), failed + (resp.status != 200)
                i += MISS_CONCURRENCY

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(MISS_CONCURRENCY)))
        return done / (time.perf_counter() - started), failed


async def measure(lab: Lab, db_url: str, args: argparse.Namespace) -> None:
    keys = await bulk_create_keys(db_url, KEYS)
    bouncer = PgBouncer.start(db_url, lab.tmp / "pgbouncer", pool_size=10)
    lab.on_close("stopping pgbouncer", bouncer.close)
    pooled = bouncer.pooled(db_url)
    ways: list[tuple[str, str, str, str | None, PoolerMode]] = [
        ("direct, statement cache", "direct", db_url, None, "none"),
        ("direct, no statement cache", "uncached", db_url, None, "transaction"),
        ("PgBouncer (transaction)", "pgbouncer", pooled, db_url, "auto"),
    ]
    runner, upstream = await start_upstream()
    print(f"{'way to PostgreSQL':<28} {'lookups/s':>10} {'misses/s':>9} {'non-200':>8}")
    try:
        for name, daemon, url, listen_url, pooler in ways:
            lookups = await lookup_rate(url, listen_url, pooler, args.seconds)
            env = {"AUTHPROXY_DATABASE_LISTEN_URL": listen_url} if listen_url else {}
            proc, base = start_authproxy(
                lab,
                daemon,
                url,
                upstream,
                extra_yaml=NO_FAILURE_LIMIT + CACHE_OFF + f"db: {{pooler: {pooler}}}\n",
                extra_env=env,
            )
            await asyncio.to_thread(wait_up, lab, proc, base + "/_authproxy/readyz", ok)
            misses, failed = await miss_rate(base, keys, args.seconds)
            lab.stop(proc)
            print(f"{name:<28} {lookups:>10.0f} {misses:>9.0f} {failed:>8}")
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--short", action="store_true", help="1 s per measurement (CI)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    if args.short:
        args.seconds = 1.0
    return run_in_lab(
        "bench-pooler-", args.keep_tmp, lambda lab, db_url: asyncio.run(measure(lab, db_url, args))
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
