"""Run the real daemon (``python -m authproxy serve``) and the CLI as subprocesses.

Everything is configured the way an operator would: AUTHPROXY_* environment variables plus a
YAML file named by AUTHPROXY_CONFIG. Test modules build a ``DaemonLauncher`` in a fixture:

    @pytest.fixture
    async def launcher(tmp_path, database_url, upstream):
        async with DaemonLauncher(tmp_path, database_url=database_url,
                                  upstream_url=upstream.url) as launcher:
            yield launcher
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
READYZ = "/_authproxy/readyz"
HEALTHZ = "/_authproxy/healthz"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
CLI_TIMEOUT = 60.0
CHEAP_HASHING = {"time_cost": 1, "memory_cost_kib": 8, "parallelism": 1}
BASE_SECTIONS: dict[str, dict[str, Any]] = {
    "hashing": CHEAP_HASHING,
    "logging": {"format": "json"},
    # AUTHPROXY_TEST_FAST_PATH=0: aiohttp's server answers everything (see conftest.py).
    "server": {"fast_path": os.environ.get("AUTHPROXY_TEST_FAST_PATH", "1") != "0"},
}


class DaemonError(Exception):
    """The daemon did not start (or stop) as expected; the message carries its stderr."""


def free_port() -> int:
    """A port nobody listens on right now (the daemon binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def merge_sections(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Section-wise merge: ``overrides`` wins setting by setting, other settings stay."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section].update(values)
        else:
            merged[section] = values
    return merged


def write_config(path: Path, sections: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(sections), sort_keys=False), encoding="utf-8")
    return path


def authproxy_env(**variables: str | None) -> dict[str, str]:
    """This process's environment without any AUTHPROXY_* variable, plus ``variables``.

    ``authproxy_env(AUTHPROXY_DATABASE_URL=url, AUTHPROXY_LISTEN=None)``: None leaves it unset.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHPROXY_")}
    env.update({k: v for k, v in variables.items() if v is not None})
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error(self) -> Any:
        """The JSON error object the CLI writes to stderr on failure."""
        return json.loads(self.stderr)["error"]


async def run_cli(env: Mapping[str, str], *args: str, timeout: float = CLI_TIMEOUT) -> CliResult:
    """Run ``python -m authproxy *args``; the event loop keeps running meanwhile (so an
    upstream served by this test's loop keeps answering)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "authproxy",
        *args,
        env=dict(env),
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


class Daemon:
    """A running ``authproxy serve`` process."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        base_url: str,
        stderr_path: Path,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        self.process = process
        self.base_url = base_url
        self.stderr_path = stderr_path
        # An https daemon: the context that trusts its certificate (else None).
        self.client_ssl = client_ssl

    def session(self, **kwargs: Any) -> aiohttp.ClientSession:
        """An aiohttp session that trusts this daemon's certificate (when it has one)."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.client_ssl or True), **kwargs
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return self.base_url + path

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (other lines, e.g. tracebacks, are skipped)."""
        events = []
        for line in self.stderr().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def memory_kib(self, field: str = "VmHWM") -> int:
        """A /proc/<pid>/status memory figure in KiB: VmHWM is the peak RSS, VmRSS the current."""
        status = Path(f"/proc/{self.pid}/status").read_text(encoding="ascii")
        for line in status.splitlines():
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0])
        raise KeyError(field)

    async def _wait_ready(self, session: aiohttp.ClientSession, patience: float = 3.0) -> None:
        """Best effort, as a load balancer would: until readyz says 200 (the revocation
        listener is up; its first connect flushes the cache), or ``patience`` runs out for
        a daemon started without its database on purpose."""
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            try:
                async with session.get(self.url(READYZ)) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            await asyncio.sleep(0.05)

    async def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        probe = aiohttp.ClientTimeout(total=1.0)
        async with self.session(timeout=probe) as session:
            while True:
                if self.process.poll() is not None:
                    raise DaemonError(
                        f"authproxy serve exited with {self.process.returncode} "
                        f"before it was healthy; stderr:\n{self.stderr()}"
                    )
                try:
                    async with session.get(self.url(HEALTHZ)) as resp:
                        if resp.status == 200:
                            await self._wait_ready(session)
                            return
                except (aiohttp.ClientError, TimeoutError, OSError):
                    pass
                if time.monotonic() > deadline:
                    await self.kill()
                    raise DaemonError(
                        f"authproxy serve was not healthy after {timeout} s; "
                        f"stderr:\n{self.stderr()}"
                    )
                await asyncio.sleep(0.1)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait for the exit (SIGKILL after ``timeout``), return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if await self._wait(timeout) is None:
                await self.kill()
        code = self.process.returncode
        assert code is not None
        return code

    async def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Wait (without signalling) for the process to exit; its exit code, or None."""
        return await self._wait(timeout)

    async def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            await self._wait(STOP_TIMEOUT)

    async def _wait(self, timeout: float) -> int | None:
        # Polled rather than Popen.wait(): this test's event loop must keep serving the
        # upstream while the daemon drains its requests.
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.process.returncode


async def start_daemon(
    env: Mapping[str, str],
    *,
    stderr_path: Path,
    timeout: float = START_TIMEOUT,
    client_ssl: ssl.SSLContext | None = None,
) -> Daemon:
    """Start ``authproxy serve`` with ``env`` (which must set AUTHPROXY_LISTEN) and wait
    until /_authproxy/healthz answers 200; over HTTPS, trusting ``client_ssl``, if given."""
    listen = env["AUTHPROXY_LISTEN"]
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "authproxy", "serve"],
            env=dict(env),
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
    scheme = "http" if client_ssl is None else "https"
    daemon = Daemon(
        process, base_url=f"{scheme}://{listen}", stderr_path=stderr_path, client_ssl=client_ssl
    )
    await daemon.wait_healthy(timeout)
    return daemon


class DaemonLauncher:
    """Starts daemons and runs CLI commands against one database and one upstream.

    Each ``env(**sections)`` call writes a fresh YAML file (cheap hashing and JSON logs,
    plus ``sections``) and returns the environment naming it. ``aclose`` stops every
    daemon still running.
    """

    def __init__(self, tmp_path: Path, *, database_url: str, upstream_url: str) -> None:
        self._dir = tmp_path
        self.database_url = database_url
        self.upstream_url = upstream_url
        self._counter = itertools.count(1)
        self._daemons: list[Daemon] = []

    def env(self, *, listen: str | None = None, **sections: Any) -> dict[str, str]:
        config = write_config(
            self._dir / f"authproxy-{next(self._counter)}.yaml",
            merge_sections(BASE_SECTIONS, sections),
        )
        return authproxy_env(
            AUTHPROXY_CONFIG=str(config),
            AUTHPROXY_DATABASE_URL=self.database_url,
            AUTHPROXY_UPSTREAM_URL=self.upstream_url,
            AUTHPROXY_LISTEN=listen,
        )

    async def start(self, *, client_ssl: ssl.SSLContext | None = None, **sections: Any) -> Daemon:
        """Start a daemon on a free port with ``sections`` added to its YAML file; with
        ``client_ssl``, one whose listener speaks HTTPS (server.tls_* in ``sections``)."""
        env = self.env(listen=f"127.0.0.1:{free_port()}", **sections)
        stderr_path = self._dir / f"daemon-{next(self._counter)}.stderr"
        daemon = await start_daemon(env, stderr_path=stderr_path, client_ssl=client_ssl)
        self._daemons.append(daemon)
        return daemon

    async def cli(self, *args: str, **sections: Any) -> CliResult:
        return await run_cli(self.env(**sections), *args)

    async def create_key(self, space: str = "plant-7", name: str = "test key") -> dict[str, Any]:
        """Create a key with the CLI; the returned key object includes ``key``."""
        result = await self.cli("keys", "create", "--space", space, "--name", name)
        if result.exit_code != 0:
            raise DaemonError(f"keys create failed ({result.exit_code}): {result.stderr}")
        created: dict[str, Any] = result.json()
        return created

    async def aclose(self) -> None:
        for daemon in self._daemons:
            await daemon.stop()

    async def __aenter__(self) -> DaemonLauncher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
