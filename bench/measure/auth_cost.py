"""Cache-hit cost: microseconds per call of Authenticator.authenticate with a cached key.

`authenticator.authenticate(["Bearer <key>"])` on the Authenticator the daemon wires
(create_app + AppRunner.setup(): the real cache, metrics and store on the scratch
database), after one call has missed (PostgreSQL + argon2) and cached the key; no
network. Best of 3 passes of `calls` calls.

It runs in a fresh process, so nothing of the caller's run is in its heap:

    python -m bench.measure.auth_cost DB_URL KEY CALLS
    # prints RESULT {"us_per_call": ..., "passes_us": [...]}

speed.py's section calls measure(), which runs exactly that and prints the result.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from authproxy.app import COMPONENTS, create_app
from authproxy.config.schema import build_config
from authproxy.observability.logs import configure_logging
from bench.lab.aio import run_async
from bench.lab.processes import BenchError, Lab

Call = Callable[[], Awaitable[object]]


def measure(lab: Lab, db_url: str, key: str, calls: int) -> None:
    """Runs this module in a fresh process and prints its numbers."""
    result = lab.run_module(
        "auth-cost", "bench.measure.auth_cost", [db_url, key, str(calls)], timeout=300
    )
    print(
        f"{result['us_per_call']:.2f} µs per call (best of 3 passes: "
        + ", ".join(f"{p:.2f}" for p in result["passes_us"])
        + " µs), "
        f"{1e6 / result['us_per_call']:,.0f} calls/s on one core; the create_app wiring"
    )


async def time_calls(db_url: str, key: str, calls: int) -> dict[str, Any]:
    cfg = build_config({"db": {"url": db_url}, "logging": {"level": "warning"}}, {})
    configure_logging(cfg.logging)
    app = create_app(cfg)  # the composition root: real cache, metrics, store, hasher
    runner = web.AppRunner(app)
    await runner.setup()  # runs the cleanup contexts: pool, listener, flusher
    try:
        authenticator = app[COMPONENTS].authenticator
        header = [f"Bearer {key}"]

        async def call() -> object:
            result = authenticator.authenticate(header)
            return await result if inspect.isawaitable(result) else result

        await cache_the_key(app, call)
        for _ in range(1000):
            await call()
        timings = await passes(call, calls)
        return {
            "us_per_call": min(timings) / calls * 1e6,
            "passes_us": [t / calls * 1e6 for t in timings],
        }
    finally:
        await runner.cleanup()


async def cache_the_key(app: web.Application, call: Call) -> None:
    """The first call misses (PostgreSQL + argon2) and caches the key. The revocation
    listener flushes the cache when its LISTEN connection comes up, so call until the
    entry is there and stays there."""
    principal = None
    for _ in range(100):
        principal = await call()
        await asyncio.sleep(0.05)
        if len(app[COMPONENTS].cache) == 1:
            break
    if len(app[COMPONENTS].cache) != 1:
        raise BenchError(f"expected 1 cached key, found {len(app[COMPONENTS].cache)}")
    if principal is None:
        raise BenchError("authenticate() returned no principal")


async def passes(call: Call, calls: int, count: int = 3) -> list[float]:
    """Seconds of each of `count` passes of `calls` calls."""
    timings = []
    for _ in range(count):
        gc.collect()
        started = time.perf_counter()
        for _ in range(calls):
            await call()
        timings.append(time.perf_counter() - started)
    return timings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db_url", help="a migrated database that holds the key")
    parser.add_argument("key", help="a valid API key")
    parser.add_argument("calls", type=int, help="calls per timed pass")
    args = parser.parse_args(argv)
    result = run_async(time_calls(args.db_url, args.key, args.calls))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
