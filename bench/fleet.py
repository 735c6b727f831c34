#!/usr/bin/env python3
"""Benchmark: a fleet of N authproxy processes on one PostgreSQL (N = 1, 2, 4).

For each N: revoke-to-refusal lag across all of them (each revoke through process 0's
admin API, the key cached on every process first, each process polled until it
refuses; the p99 is over every (revoke, process) pair), then a steady request load
spread over the N processes with a fixed set of keys, counting what last_used
flushing costs the database: UPDATE statements/s (the daemons' flush counter) and rows
written/s (the daemons' flush metrics), which should grow with N and the keys in use,
never with the request rate: at most N / flush_interval statements and N x keys /
flush_interval rows per second.

    python bench/fleet.py               # N = 1, 2, 4; 100 revokes, 20 s of load each
    python bench/fleet.py --short       # CI: N = 1, 2; 5 revokes, 2 s of load

PostgreSQL: $AUTHPROXY_TEST_DATABASE_URL (a scratch database is created and dropped) or
an embedded one. Prints numbers; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # `python bench/fleet.py` puts bench/ on sys.path, not the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.lab.database import run_in_lab
from bench.lab.probes import ok, wait_up
from bench.lab.processes import BenchError, Lab
from bench.revocation_lag import KEYS, flushes, metric, start_daemons, start_upstream, token

LOAD_KEYS = 20


async def create(session: aiohttp.ClientSession, base: str, name: str) -> dict[str, str]:
    auth = {"Authorization": f"Bearer {token()}"}
    async with session.post(base + KEYS, json={"name": name}, headers=auth) as resp:
        created: dict[str, str] = await resp.json()
        return created


async def status(session: aiohttp.ClientSession, base: str, key: str) -> int:
    async with session.get(base + "/x", headers={"Authorization": f"Bearer {key}"}) as resp:
        await resp.read()
        return resp.status


async def revocation_lags(
    session: aiohttp.ClientSession, bases: list[str], revokes: int
) -> list[float]:
    """Seconds from each revoke through bases[0] until each process refuses the key."""
    lags: list[float] = []
    for i in range(revokes):
        key = await create(session, bases[0], f"revoke {i}")
        for base in bases:
            if await status(session, base, key["key"]) != 200:
                raise BenchError(f"{base} refused a new key")
        auth = {"Authorization": f"Bearer {token()}"}
        async with session.post(f"{bases[0]}{KEYS}/{key['id']}/revoke", headers=auth) as resp:
            if resp.status != 200:
                raise BenchError(f"revoke answered {resp.status}")
        revoked_at = time.perf_counter()

        async def refused(base: str, key: str = key["key"], since: float = revoked_at) -> float:
            while await status(session, base, key) != 401:
                await asyncio.sleep(0.001)
            return time.perf_counter() - since

        lags += await asyncio.gather(*(refused(base) for base in bases))
    return lags


async def keys_written(bases: list[str]) -> float:
    """last_used rows the processes wrote so far (each flush's keys, summed)."""
    return sum([await metric(b, "authproxy_last_used_flush_keys_sum") for b in bases])


async def steady_load(
    session: aiohttp.ClientSession, bases: list[str], keys: list[str], seconds: float, rate: int
) -> int:
    """Send ``rate`` requests/s in all, round robin over processes, each process seeing
    every key in turn; how many were sent."""
    sent, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(elapsed * rate)
        n = len(bases)
        await asyncio.gather(
            *(status(session, bases[i % n], keys[i // n % len(keys)]) for i in range(sent, due))
        )
        sent = due
        await asyncio.sleep(0.005)
    return sent


async def last_used_cost(
    session: aiohttp.ClientSession, bases: list[str], args: argparse.Namespace
) -> tuple[float, float, float]:
    """(requests/s, last_used UPDATE statements/s, rows written/s) per second of load,
    counting the flush that follows it."""
    keys = [(await create(session, bases[0], f"load {i}"))["key"] for i in range(LOAD_KEYS)]
    await asyncio.sleep(args.flush_interval + 0.5)  # the creates' own uses are flushed
    before_statements = sum([await flushes(b) for b in bases])
    before_rows = await keys_written(bases)
    sent = await steady_load(session, bases, keys, args.seconds, args.rate)
    await asyncio.sleep(args.flush_interval + 0.5)  # the last uses flushed
    statements = sum([await flushes(b) for b in bases]) - before_statements
    rows = await keys_written(bases) - before_rows
    return sent / args.seconds, statements / args.seconds, rows / args.seconds


async def one_fleet(lab: Lab, db_url: str, n: int, args: argparse.Namespace) -> None:
    runner, upstream = await start_upstream()
    daemons = start_daemons(lab, db_url, upstream, args.flush_interval, n)
    try:
        for proc, base in daemons:  # in a thread: this loop serves the upstream meanwhile
            await asyncio.to_thread(wait_up, lab, proc, base + "/_authproxy/readyz", ok)
        bases = [base for _, base in daemons]
        async with aiohttp.ClientSession() as session:
            lags = sorted(await revocation_lags(session, bases, args.revokes))
            pct = statistics.quantiles(lags, n=100, method="inclusive")
            rate, statements, rows = await last_used_cost(session, bases, args)
        notified = sum([await metric(b, "authproxy_revocation_lag_seconds_count") for b in bases])
        print(
            f"{n:>2} | {len(lags):>5} | {pct[49] * 1000:>7.1f} | {pct[98] * 1000:>7.1f} | "
            f"{lags[-1] * 1000:>7.1f} | {rate:>6.0f} | {statements:>6.2f} | {rows:>7.1f} | "
            f"{rows * 60 / LOAD_KEYS / n:>11.1f} | {notified:>5.0f}"
        )
    finally:
        for proc, _ in daemons:
            lab.stop(proc)
        await runner.cleanup()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,4", help="fleet sizes, comma separated")
    parser.add_argument("--revokes", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0, help="of steady load")
    parser.add_argument("--rate", type=int, default=400, help="requests/s, whole fleet")
    parser.add_argument("--flush-interval", type=float, default=2.0)
    parser.add_argument("--short", action="store_true", help="CI: N = 1, 2; a few seconds")
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    if args.short:
        args.sizes, args.revokes, args.seconds, args.flush_interval = "1,2", 5, 2.0, 0.5
    print(
        f"{args.rate} requests/s over {LOAD_KEYS} keys, last_used flushed every "
        f"{args.flush_interval} s\n"
        " N | lags  | p50 ms  | p99 ms  | max ms  | req/s  | stmt/s | rows/s  | "
        "rows/key/min/proc | heard"
    )

    def measure(lab: Lab, db_url: str) -> None:
        for n in (int(size) for size in args.sizes.split(",")):
            asyncio.run(one_fleet(lab, db_url, n, args))

    return run_in_lab("bench-fleet-", args.keep_tmp, measure)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
