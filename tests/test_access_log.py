"""The access log of a real daemon process: every line written, and never a stall.

Lines are batched (observability/access_log.py) and written by a sink that depends on
what stderr is (observability/log_sinks.py): a file, a pipe (a container runtime, a log
shipper) or a socket (a journal stream). For each, these tests hold the two promises that
come with batching: a SIGTERM loses no line, and a stderr nobody reads (a stalled log
shipper) costs lines, counted, never the proxying.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from tests.daemon import REPO_ROOT, Daemon, DaemonLauncher, free_port, start_daemon
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


@contextmanager
def _stderr_of_kind(kind: str, log: Path) -> Iterator[IO[bytes] | socket.socket]:
    """Something to hand a daemon as its stderr that ends up in ``log``: the file itself,
    a pipe into `cat > log`, or a socket whose other end a thread copies into ``log``."""
    if kind == "file":
        with log.open("wb") as file:
            yield file
    elif kind == "pipe":
        cat = shutil.which("cat")
        assert cat is not None
        with log.open("wb") as out:
            reader = subprocess.Popen([cat], stdin=subprocess.PIPE, stdout=out)
        assert reader.stdin is not None
        try:
            yield reader.stdin
        finally:
            reader.stdin.close()
            reader.wait(timeout=30)
    else:
        ours, theirs = socket.socketpair()

        def copy() -> None:
            with log.open("wb") as out:
                while data := ours.recv(65536):
                    out.write(data)

        copier = threading.Thread(target=copy)
        copier.start()
        try:
            yield theirs
        finally:
            theirs.close()
            copier.join(timeout=30)
            ours.close()


def _spawn(env: dict[str, str], stderr: Any, log: Path) -> Daemon:
    listen = env["AUTHPROXY_LISTEN"]
    process = subprocess.Popen(
        [sys.executable, "-m", "authproxy", "serve"],
        env=env,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    return Daemon(process, base_url=f"http://{listen}", stderr_path=log)


class TestNothingLost:
    @pytest.mark.parametrize("kind", ["file", "pipe", "socket"])
    async def test_sigterm_writes_every_line(
        self, launcher: DaemonLauncher, tmp_path: Path, kind: str
    ) -> None:
        """N requests, then SIGTERM: exactly N lines, one per request, whatever stderr is.
        The flush interval is long, so only a full buffer and the shutdown itself write
        lines."""
        key = (await launcher.create_key())["key"]
        env = launcher.env(listen=f"127.0.0.1:{free_port()}", logging={"access_flush_interval": 60})
        log = tmp_path / f"{kind}.log"
        with _stderr_of_kind(kind, log) as stderr:
            daemon = _spawn(env, stderr, log)
            try:
                await daemon.wait_healthy()
                paths = [f"/counted/{i}" for i in range(500)]
                assert set(await _get_all(daemon.url(""), key, paths)) == {200}
                assert await daemon.stop() == 0
            finally:
                await daemon.kill()
        lines = [
            e
            for e in daemon.log_events()
            if e.get("event") == "request" and e["path"].startswith("/counted/")
        ]
        assert sorted(line["path"] for line in lines) == sorted(paths)
        assert {line["status"] for line in lines} == {200}


class TestStalledStderr:
    @pytest.mark.parametrize("kind", ["pipe", "socket"])
    async def test_proxying_goes_on_and_dropped_lines_are_counted(
        self, launcher: DaemonLauncher, tmp_path: Path, kind: str
    ) -> None:
        """stderr is a pipe or a socket nobody reads: once it and the queue are full,
        lines are dropped and counted, and every request is still answered."""
        key = (await launcher.create_key())["key"]
        # Small batches: the queue (16 of them) fills after a few hundred lines.
        env = launcher.env(listen=f"127.0.0.1:{free_port()}", logging={"access_buffer_bytes": 4096})
        if kind == "pipe":
            never_read: Any = subprocess.PIPE
        else:
            never_read, other_end = socket.socketpair()
        daemon = _spawn(env, never_read, tmp_path / "none")
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
            if kind == "pipe":
                assert daemon.process.stderr is not None
                daemon.process.stderr.close()
            else:
                never_read.close()
                other_end.close()


class TestRequestContext:
    @pytest.mark.parametrize("fast_path", [True, False])
    async def test_lines_logged_during_a_request_name_it(
        self, launcher: DaemonLauncher, tmp_path: Path, fast_path: bool
    ) -> None:
        """A line logged while a request is served (here: its upstream is down) names the
        request: the id the client was answered with, method, path without the query,
        space and key. The next request on the same connection, refused before any key
        is accepted, is named alone: nothing of the first one carries over."""
        created = await launcher.create_key()
        env = launcher.env(listen=f"127.0.0.1:{free_port()}", server={"fast_path": fast_path})
        env["AUTHPROXY_UPSTREAM_URL"] = f"http://127.0.0.1:{free_port()}"  # nobody listens
        daemon = await start_daemon(env, stderr_path=tmp_path / "daemon.stderr")
        try:
            async with daemon.session() as session:
                auth = {"Authorization": f"Bearer {created['key']}"}
                async with session.get(daemon.url("/points?from=1"), headers=auth) as failed:
                    assert failed.status == 502
                refused_auth = {"Authorization": "Bearer not-a-key"}
                async with session.get(daemon.url("/other"), headers=refused_auth) as refused:
                    assert refused.status == 401
            assert await daemon.stop() == 0
        finally:
            await daemon.kill()
        events = daemon.log_events()
        [upstream_failed] = [e for e in events if e.get("event") == "upstream_failed"]
        assert {
            name: upstream_failed.get(name)
            for name in ("request_id", "method", "path", "space_id", "key_id")
        } == {
            "request_id": failed.headers["X-Request-Id"],
            "method": "GET",
            "path": "/points",
            "space_id": "plant-7",
            "key_id": created["id"],
        }
        [auth_refused] = [e for e in events if e.get("event") == "auth_refused"]
        assert auth_refused["request_id"] == refused.headers["X-Request-Id"]
        assert auth_refused["path"] == "/other"
        assert "key_id" not in auth_refused and "space_id" not in auth_refused
        # Lines logged outside any request name none.
        [stopped] = [e for e in events if e.get("event") == "stopped"]
        assert "request_id" not in stopped and "path" not in stopped


class TestConsoleFormat:
    @pytest.mark.parametrize("fast_path", [True, False])
    async def test_every_request_gets_a_line_that_names_it(
        self, launcher: DaemonLauncher, tmp_path: Path, fast_path: bool
    ) -> None:
        """logging.format console (what a person at a terminal gets): one line per request,
        named as the JSON line is, whichever path served it. On the fast path a cached
        key's proxied request and forward-auth's yes are answered without a task, and
        their lines were once written without the request's fields."""
        key = (await launcher.create_key())["key"]
        env = launcher.env(
            listen=f"127.0.0.1:{free_port()}",
            server={"fast_path": fast_path},
            logging={"format": "console"},
        )
        daemon = await start_daemon(env, stderr_path=tmp_path / "daemon.stderr")
        answered: dict[str, tuple[int, str]] = {}
        try:
            async with daemon.session() as session:
                auth = {"Authorization": f"Bearer {key}"}
                for path in ("/cold", "/cached?q=1", "/_authproxy/v1/verify", "/refused"):
                    headers = {} if path == "/refused" else auth
                    async with session.get(daemon.url(path), headers=headers) as resp:
                        await resp.read()
                        answered[path.split("?")[0]] = (resp.status, resp.headers["X-Request-Id"])
            assert await daemon.stop() == 0
        finally:
            await daemon.kill()
        assert [status for status, _ in answered.values()] == [200, 200, 200, 401]
        text = re.sub(r"\x1b\[[0-9;]*m", "", daemon.stderr())  # the renderer's colours
        lines = [line for line in text.splitlines() if re.search(r"\] request\s", line)]
        for path, (status, request_id) in answered.items():
            [line] = [line for line in lines if f"request_id={request_id}" in line]
            assert f"path={path} " in line + " "
            assert "method=GET" in line
            assert f"status={status}" in line
        # wait_healthy asks readyz and healthz.
        ours = [line for line in lines if not re.search(r"path=/_authproxy/(readyz|healthz)", line)]
        assert len(ours) == len(answered)
        assert key not in text


async def _metrics(daemon: Daemon) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(daemon.url("/_authproxy/metrics")) as resp:
            text: str = await resp.text()
            assert resp.status == 200
            return text
