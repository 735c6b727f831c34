#!/usr/bin/env python3
"""Benchmark: WebSocket echo through authproxy vs direct vs nginx, and revoke-to-close.

An aiohttp WebSocket echo upstream runs in this process. Through each target (the
upstream directly, nginx proxying WebSocket with `proxy_set_header Upgrade`, authproxy
daemon B) one connection measures small-message round trips per second, then 1 MiB
binary messages echoed (MiB/s each way). Then N times: a key is created through daemon A's
admin API, a WebSocket opened through B, the key revoked through A, and the time until
B's close frame (1008) reaches the client is recorded (p50/p99).

    python bench/websocket.py            # 10 s per throughput run, 200 revokes
    python bench/websocket.py --short    # CI: a few seconds

Prints numbers; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # `python bench/websocket.py` puts bench/ on sys.path, not the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web

from bench.lab.database import run_in_lab
from bench.lab.install import ensure_debian_tools
from bench.lab.nginx import start_nginx
from bench.lab.probes import any_answer, ok, wait_up
from bench.lab.processes import BenchError, Lab, free_port
from bench.revocation_lag import KEYS, start_daemons, token

MIB = 1024 * 1024
NGINX_WS = """
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }}
    }}"""


async def start_upstream() -> tuple[web.AppRunner, int]:
    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def plain(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_get("/{tail:.*}", plain)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def throughput(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], seconds: float
) -> tuple[float, float]:
    """(round trips/s of 64-byte text messages, MiB/s of 1 MiB binary messages echoed)."""
    async with session.ws_connect(url, headers=headers, compress=0, max_msg_size=0) as ws:
        small, n, started = "x" * 64, 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            await ws.send_str(small)
            await ws.receive()
            n += 1
        rtt = n / (time.perf_counter() - started)
        block, moved, started = b"b" * MIB, 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            await ws.send_bytes(block)
            moved += len((await ws.receive()).data)
        return rtt, moved / MIB / (time.perf_counter() - started)


async def revoke_to_close(
    session: aiohttp.ClientSession, a: str, b: str, revokes: int
) -> list[float]:
    auth = {"Authorization": f"Bearer {token()}"}
    lags = []
    for _ in range(revokes):
        async with session.post(a + KEYS, json={"name": "ws"}, headers=auth) as resp:
            key = await resp.json()
        ws = await session.ws_connect(
            b + "/ws", headers={"Authorization": f"Bearer {key['key']}"}, autoping=False
        )
        async with session.post(a + f"{KEYS}/{key['id']}/revoke", headers=auth) as resp:
            assert resp.status == 200
        revoked = time.perf_counter()
        msg = await asyncio.wait_for(ws.receive(), 5)
        lags.append(time.perf_counter() - revoked)
        if msg.data != 1008:
            raise BenchError(f"expected a close frame 1008, got {msg.type} {msg.data}")
        await ws.close()
    return lags


async def measure(lab: Lab, db_url: str, args: argparse.Namespace) -> None:
    runner, up_port = await start_upstream()
    upstream = f"http://127.0.0.1:{up_port}"
    daemons = start_daemons(lab, db_url, upstream, 10.0)
    nginx_port = free_port()
    nginx = start_nginx(lab, "nginx-ws", NGINX_WS.format(port=nginx_port, upstream=up_port))
    try:
        for proc, base in daemons:
            await asyncio.to_thread(wait_up, lab, proc, base + "/_authproxy/readyz", ok)
        nginx_base = f"http://127.0.0.1:{nginx_port}"
        await asyncio.to_thread(wait_up, lab, nginx, nginx_base + "/", any_answer)
        (_, a), (_, b) = daemons
        async with aiohttp.ClientSession() as session:
            auth = {"Authorization": f"Bearer {token()}"}
            async with session.post(a + KEYS, json={"name": "bench"}, headers=auth) as resp:
                key = (await resp.json())["key"]
            targets = {
                "direct": (upstream, {}),
                "nginx proxy_pass": (nginx_base, {}),
                "authproxy, 1 worker": (b, {"Authorization": f"Bearer {key}"}),
            }
            results = {}
            print(f"WebSocket echo, one connection, {args.seconds:.0f} s per measure:")
            for name, (base, headers) in targets.items():
                rtt, mib = await throughput(session, base + "/ws", headers, args.seconds)
                results[name] = mib
                print(f"  {name:22} {rtt:10,.0f} round trips/s  {mib:8,.1f} MiB/s echoed")
            ratio = results["authproxy, 1 worker"] / results["nginx proxy_pass"]
            print(f"  authproxy MiB/s vs nginx: {ratio:.2f}x")
            lags = sorted(await revoke_to_close(session, a, b, args.revokes))
            pct = statistics.quantiles(lags, n=100, method="inclusive")
            print(
                f"revoke (A's admin API) -> close frame 1008 from B, {len(lags)} revokes (ms): "
                f"p50 {pct[49] * 1000:.2f}  p99 {pct[98] * 1000:.2f}  max {lags[-1] * 1000:.2f}"
            )
    finally:
        for proc, _ in daemons:
            lab.stop(proc)
        lab.stop(nginx)
        await runner.cleanup()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--revokes", type=int, default=200)
    parser.add_argument("--short", action="store_true", help="CI: 1 s measures, 20 revokes")
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    if args.short:
        args.seconds, args.revokes = 1.0, 20
    ensure_debian_tools()
    return run_in_lab(
        "bench-websocket-", args.keep_tmp, lambda lab, db: asyncio.run(measure(lab, db, args))
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
