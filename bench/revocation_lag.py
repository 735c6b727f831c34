#!/usr/bin/env python3
"""Benchmark: revocation lag across two authproxy processes, and last_used UPDATEs/minute.

Starts two real daemons (A, B) on one PostgreSQL and a tiny upstream, creates N keys,
makes B cache each, revokes each through A's admin API and measures how long until B
refuses it (end to end, polling B every millisecond). Then drives a steady request rate
through B and counts the last_used flushes (one UPDATE statement each) per minute.

    python bench/revocation_lag.py                       # 1,000 revokes, 60 s of load
    python bench/revocation_lag.py --revokes 50 --seconds 5     # CI's short mode

PostgreSQL: $AUTHPROXY_TEST_DATABASE_URL (a server; a scratch database is created and
dropped) or, when unset, an embedded one. Prints numbers; asserts nothing about time.
The daemons, their configs and logs and the database come from bench/lab/, as speed.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # `python bench/revocation_lag.py` puts bench/ on sys.path, not the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import jwt
from aiohttp import web

from bench.lab.daemons import NO_FAILURE_LIMIT, start_authproxy
from bench.lab.database import embedded_server, scratch_database, server_from_env
from bench.lab.keys import SPACE
from bench.lab.probes import metric_values, ok, wait_up
from bench.lab.processes import BenchError, Lab, Proc, free_port

SECRET = secrets.token_urlsafe(32)
KEYS = f"/_authproxy/v1/spaces/{SPACE}/keys"


def token() -> str:
    return jwt.encode(
        {"sub": "bench", "exp": int(time.time()) + 3600, "roles": {SPACE: "owner"}},
        SECRET,
        algorithm="HS256",
    )


async def measure_lag(session: aiohttp.ClientSession, a: str, b: str, n: int) -> list[float]:
    """Seconds from each revoke through A until B answers 401 for that key."""
    auth = {"Authorization": f"Bearer {token()}"}
    lags = []
    for _ in range(n):
        async with session.post(a + KEYS, json={"name": "b"}, headers=auth) as resp:
            key = await resp.json()
        bearer = {"Authorization": f"Bearer {key['key']}"}
        async with session.get(b + "/x", headers=bearer) as resp:
            assert resp.status == 200, resp.status  # now cached on B
        async with session.post(a + f"{KEYS}/{key['id']}/revoke", headers=auth) as resp:
            assert resp.status == 200
        revoked_at = time.perf_counter()
        while True:
            async with session.get(b + "/x", headers=bearer) as resp:
                if resp.status == 401:
                    break
            await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - revoked_at)
    return lags


async def metric(base: str, name: str) -> float:
    return (await asyncio.to_thread(metric_values, base)).get(name, 0.0)


async def flushes(base: str) -> float:
    return await metric(base, "authproxy_last_used_flush_keys_count")


async def steady_load(
    session: aiohttp.ClientSession, a: str, b: str, seconds: float, rate: int
) -> tuple[int, float]:
    """(requests sent, last_used flushes B made) while sending `rate` requests/s to B."""
    auth = {"Authorization": f"Bearer {token()}"}
    keys = []
    for i in range(10):
        async with session.post(a + KEYS, json={"name": f"load {i}"}, headers=auth) as resp:
            keys.append((await resp.json())["key"])
    before = await flushes(b)
    sent, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(elapsed * rate)
        batch = [
            session.get(b + "/x", headers={"Authorization": f"Bearer {keys[i % 10]}"})
            for i in range(sent, due)
        ]
        for request in batch:
            async with request as resp:
                await resp.read()
        sent = due
        await asyncio.sleep(0.005)
    return sent, await flushes(b) - before


async def report_lag(session: aiohttp.ClientSession, a: str, b: str, revokes: int) -> None:
    lags = sorted(await measure_lag(session, a, b, revokes))
    pct = statistics.quantiles(lags, n=100, method="inclusive")
    print(
        f"revocation lag over {len(lags)} revokes, A -> B (end to end, ms): "
        f"p50 {pct[49] * 1000:.2f}  p90 {pct[89] * 1000:.2f}  "
        f"p99 {pct[98] * 1000:.2f}  max {lags[-1] * 1000:.2f}"
    )
    total = await metric(b, "authproxy_revocation_lag_seconds_sum")
    count = await metric(b, "authproxy_revocation_lag_seconds_count")
    print(
        f"  of which NOTIFY -> the key refused inside B (its metric): mean "
        f"{total / max(count, 1) * 1000:.2f} ms over {count:.0f}; the rest is B's "
        "next request paying one argon2 verification before it can say 401"
    )


async def report_load(
    session: aiohttp.ClientSession, a: str, b: str, args: argparse.Namespace
) -> None:
    sent, flushed = await steady_load(session, a, b, args.seconds, args.rate)
    per_minute = flushed * 60 / args.seconds
    print(
        f"steady load: {sent} requests in {args.seconds:.0f} s "
        f"({sent / args.seconds:.0f}/s) -> {flushed:.0f} last_used UPDATE statements "
        f"= {per_minute:.1f} per minute (flush interval {args.flush_interval} s)"
    )


async def start_upstream() -> tuple[web.AppRunner, str]:
    """The tiny upstream, in this process: {"ok": true} to every GET."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    upstream = web.Application()
    upstream.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(upstream, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def start_daemons(
    lab: Lab, db_url: str, upstream: str, flush_interval: float, count: int = 2
) -> list[tuple[Proc, str]]:
    """A and B (or ``count`` of them, bench/fleet.py): admin API on (the JWT secret
    above), last_used flushed every interval."""
    return [
        start_authproxy(
            lab,
            name,
            db_url,
            upstream,
            extra_yaml=NO_FAILURE_LIMIT + f"usage: {{flush_interval: {flush_interval}}}\n",
            extra_env={"AUTHPROXY_ADMIN_JWT_SECRET": SECRET},
        )
        for name in (chr(ord("a") + i) for i in range(count))
    ]


async def measure(lab: Lab, db_url: str, args: argparse.Namespace) -> None:
    runner, upstream = await start_upstream()
    daemons = start_daemons(lab, db_url, upstream, args.flush_interval)
    try:
        for proc, base in daemons:  # in a thread: this loop serves the upstream meanwhile
            await asyncio.to_thread(wait_up, lab, proc, base + "/_authproxy/readyz", ok)
        (_, a), (_, b) = daemons
        async with aiohttp.ClientSession() as session:
            await report_lag(session, a, b, args.revokes)
            await report_load(session, a, b, args)
    finally:
        for proc, _ in daemons:
            lab.stop(proc)
        await runner.cleanup()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revokes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=200, help="requests/s during the load")
    parser.add_argument("--flush-interval", type=float, default=10.0)
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    server = server_from_env() or embedded_server()
    lab = Lab.create("bench-revocation-")
    try:
        db_url = scratch_database(lab, server, "authproxy_bench_")
        asyncio.run(measure(lab, db_url, args))
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        lab.close(args.keep_tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
