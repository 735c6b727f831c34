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
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import jwt
from aiohttp import web

SECRET = secrets.token_urlsafe(32)
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token() -> str:
    return jwt.encode({"sub": "bench", "exp": int(time.time()) + 3600,
                       "roles": {"bench": "owner"}}, SECRET, algorithm="HS256")


async def scratch_database() -> tuple[str, str]:
    server = os.environ.get("AUTHPROXY_TEST_DATABASE_URL")
    if not server:
        sys.path.insert(0, str(ROOT))
        from authproxy.db.embedded import start_embedded_postgres

        server = start_embedded_postgres(tempfile.mkdtemp(prefix="bench-pg-") + "/data")
    name = "authproxy_bench_" + secrets.token_hex(4)
    conn = await asyncpg.connect(server)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return server, urlunsplit(urlsplit(server)._replace(path="/" + name))


def start_daemon(db_url: str, upstream: str, flush_interval: float, log: Path) -> tuple[
        subprocess.Popen[bytes], str]:
    port = free_port()
    config = log.with_suffix(".yaml")
    config.write_text(f"usage: {{flush_interval: {flush_interval}}}\n"
                      "logging: {level: warning, format: json}\n"
                      # It polls revoked keys from one address on purpose: no throttling.
                      "limits: {failure_threshold: 0}\n"
                      "server: {drain_delay: 0}\n")
    env = {**os.environ, "AUTHPROXY_DATABASE_URL": db_url, "AUTHPROXY_UPSTREAM_URL": upstream,
           "AUTHPROXY_LISTEN": f"127.0.0.1:{port}", "AUTHPROXY_ADMIN_JWT_SECRET": SECRET,
           "AUTHPROXY_CONFIG": str(config)}
    process = subprocess.Popen([sys.executable, "-m", "authproxy", "serve"], env=env,
                               stderr=log.open("wb"))
    return process, f"http://127.0.0.1:{port}"


async def wait_ready(session: aiohttp.ClientSession, base: str) -> None:
    for _ in range(200):
        try:
            async with session.get(base + "/_authproxy/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise SystemExit(f"daemon at {base} did not become ready")


async def measure_lag(session: aiohttp.ClientSession, a: str, b: str, n: int) -> list[float]:
    auth = {"Authorization": f"Bearer {token()}"}
    lags = []
    for _ in range(n):
        async with session.post(a + "/_authproxy/v1/spaces/bench/keys", json={"name": "b"},
                                headers=auth) as resp:
            key = await resp.json()
        bearer = {"Authorization": f"Bearer {key['key']}"}
        async with session.get(b + "/x", headers=bearer) as resp:
            assert resp.status == 200, resp.status  # now cached on B
        async with session.post(a + f"/_authproxy/v1/spaces/bench/keys/{key['id']}/revoke",
                                headers=auth) as resp:
            assert resp.status == 200
        revoked_at = time.perf_counter()
        while True:
            async with session.get(b + "/x", headers=bearer) as resp:
                if resp.status == 401:
                    break
            await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - revoked_at)
    return lags


async def metric(session: aiohttp.ClientSession, base: str, name: str) -> float:
    async with session.get(base + "/_authproxy/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    return 0.0


async def flushes(session: aiohttp.ClientSession, base: str) -> float:
    return await metric(session, base, "authproxy_last_used_flush_keys_count")


async def steady_load(session: aiohttp.ClientSession, a: str, b: str, seconds: float,
                      rate: int) -> tuple[int, float]:
    auth = {"Authorization": f"Bearer {token()}"}
    keys = []
    for i in range(10):
        async with session.post(a + "/_authproxy/v1/spaces/bench/keys",
                                json={"name": f"load {i}"}, headers=auth) as resp:
            keys.append((await resp.json())["key"])
    before = await flushes(session, b)
    sent, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        due = int(elapsed * rate)
        batch = [session.get(b + "/x", headers={"Authorization": f"Bearer {keys[i % 10]}"})
                 for i in range(sent, due)]
        for request in batch:
            async with request as resp:
                await resp.read()
        sent = due
        await asyncio.sleep(0.005)
    return sent, await flushes(session, b) - before


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revokes", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=200, help="requests/s during the load")
    parser.add_argument("--flush-interval", type=float, default=10.0)
    args = parser.parse_args()

    server, db_url = await scratch_database()
    subprocess.run([sys.executable, "-m", "authproxy", "migrate"], check=True,
                   env={**os.environ, "AUTHPROXY_DATABASE_URL": db_url},
                   stdout=subprocess.DEVNULL)
    upstream = web.Application()
    upstream.router.add_get("/{tail:.*}", lambda r: web.json_response({"ok": True}))
    runner = web.AppRunner(upstream, access_log=None)
    await runner.setup()
    up_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", up_port).start()
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    daemons = [start_daemon(db_url, f"http://127.0.0.1:{up_port}", args.flush_interval,
                            logs / f"{name}.log") for name in ("a", "b")]
    try:
        async with aiohttp.ClientSession() as session:
            for _, base in daemons:
                await wait_ready(session, base)
            (_, a), (_, b) = daemons
            lags = sorted(await measure_lag(session, a, b, args.revokes))
            pct = statistics.quantiles(lags, n=100, method="inclusive")
            print(f"revocation lag over {len(lags)} revokes, A -> B (end to end, ms): "
                  f"p50 {pct[49] * 1000:.2f}  p90 {pct[89] * 1000:.2f}  "
                  f"p99 {pct[98] * 1000:.2f}  max {lags[-1] * 1000:.2f}")
            total = await metric(session, b, "authproxy_revocation_lag_seconds_sum")
            count = await metric(session, b, "authproxy_revocation_lag_seconds_count")
            print(f"  of which NOTIFY -> the key refused inside B (its metric): mean "
                  f"{total / max(count, 1) * 1000:.2f} ms over {count:.0f}; the rest is B's "
                  "next request paying one argon2 verification before it can say 401")
            sent, flushed = await steady_load(session, a, b, args.seconds, args.rate)
            per_minute = flushed * 60 / args.seconds
            print(f"steady load: {sent} requests in {args.seconds:.0f} s "
                  f"({sent / args.seconds:.0f}/s) -> {flushed:.0f} last_used UPDATE statements "
                  f"= {per_minute:.1f} per minute (flush interval {args.flush_interval} s)")
    finally:
        for process, _ in daemons:
            process.terminate()
            process.wait(timeout=30)
        await runner.cleanup()
        conn = await asyncpg.connect(server)
        await conn.execute(f'DROP DATABASE "{urlsplit(db_url).path[1:]}" WITH (FORCE)')
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
