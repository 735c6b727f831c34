"""The access log of a real daemon process: every line written, and never a stall.

Lines are batched (observability/access_log.py); these tests hold the two promises that
come with batching: a SIGTERM loses no line, and a stderr nobody reads (a stalled log
shipper) costs lines, counted, never the proxying.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.daemon import REPO_ROOT, Daemon, DaemonLauncher, free_port
from tests.fleet import metric_total


async def _get_all(base: str, key: str, paths: list[str], concurrency: int = 16) -> list[int]:
    """GET every path through the daemon, ``concurrency`` at a time; the statuses."""
    statuses: list[int] = []
    queue = list(reversed(paths))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            path = queue.pop()
            async with session.get(base + path, headers={"Authorization": f"Bearer {key}"}) as resp:
                await resp.read()
                statuses.append(resp.status)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return statuses


class TestNothingLost:
    async def test_sigterm_writes_every_line(self, launcher: DaemonLauncher) -> None:
        """N requests, then SIGTERM: exactly N lines, one per request. The flush interval
        is long, so only a full buffer and the shutdown itself write lines."""
        key = (await launcher.create_key())["key"]
        daemon = await launcher.start(logging={"access_flush_interval": 60})
        paths = [f"/counted/{i}" for i in range(500)]
        assert set(await _get_all(daemon.url(""), key, paths)) == {200}
        assert await daemon.stop() == 0, daemon.stderr()
        lines = [
            e
            for e in daemon.log_events()
            if e.get("event") == "request" and e["path"].startswith("/counted/")
        ]
        assert sorted(line["path"] for line in lines) == sorted(paths)
        assert {line["status"] for line in lines} == {200}


class TestStalledStderr:
    async def test_proxying_goes_on_and_dropped_lines_are_counted(
        self, launcher: DaemonLauncher, tmp_path: Path
    ) -> None:
        """stderr is a pipe nobody reads: once it and the writer's queue are full, lines
        are dropped and counted, and every request is still answered."""
        key = (await launcher.create_key())["key"]
        listen = f"127.0.0.1:{free_port()}"
        # Small batches: the queue (16 of them) fills after a few hundred lines.
        env = launcher.env(listen=listen, logging={"access_buffer_bytes": 4096})
        process = subprocess.Popen(
            [sys.executable, "-m", "authproxy", "serve"],
            env=env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,  # never read
        )
        daemon = Daemon(process, base_url=f"http://{listen}", stderr_path=tmp_path / "none")
        try:
            await daemon.wait_healthy()
            paths = [f"/stalled/{i}" for i in range(3000)]
            statuses = await asyncio.wait_for(_get_all(daemon.url(""), key, paths), timeout=120)
            assert statuses.count(200) == len(paths)
            metrics = await _metrics(daemon)
            assert metric_total(metrics, "authproxy_access_log_dropped_lines_total") > 0
        finally:
            # Its stderr is full: a clean stop would wait on it. Not what is tested here.
            await daemon.kill()
            assert process.stderr is not None
            process.stderr.close()


async def _metrics(daemon: Daemon) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(daemon.url("/_authproxy/metrics")) as resp:
            text: str = await resp.text()
            assert resp.status == 200
            return text
