"""Helper servers the benchmarks start as processes of their own (python -m bench.servers.X)."""

from __future__ import annotations

import asyncio

from aiohttp import web


async def serve(app: web.Application, port: int) -> None:
    """app on 127.0.0.1:port until the process is stopped."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()
