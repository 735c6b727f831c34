"""Shared fixtures: a real PostgreSQL (fresh database per test), a real recording upstream,
cheap argon2, and the daemon built by create_app or started as a process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import argon2
import asyncpg
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from authproxy.app import COMPONENTS, create_app
from authproxy.config.schema import Config, LoggingConfig, build_config
from authproxy.db.migrations import migrate
from authproxy.keys.audit import AuditContext
from authproxy.keys.format import KeyHasher
from authproxy.keys.service import CreatedKey
from authproxy.observability.logs import configure_logging
from authproxy.server.guards import Guard, GuardedAppRunner
from tests.daemon import DaemonLauncher
from tests.recording_upstream import RECORDER, Recorder, create_recording_upstream

TEST_DATABASE_ENV = "AUTHPROXY_TEST_DATABASE_URL"
# AUTHPROXY_TEST_FAST_PATH=0 runs every test with server.fast_path off (aiohttp serves all).
FAST_PATH = os.environ.get("AUTHPROXY_TEST_FAST_PATH", "1") != "0"
CHEAP_HASHING = {"time_cost": 1, "memory_cost_kib": 8, "parallelism": 1}


def with_database(url: str, name: str) -> str:
    """The same server URL, naming another database (works for socket-directory URLs too)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The PostgreSQL server the tests use: $AUTHPROXY_TEST_DATABASE_URL, else an embedded
    one started once for the session. No database is a failure, never a skip."""
    url = os.environ.get(TEST_DATABASE_ENV)
    if url:
        return url
    from authproxy.db.embedded import start_embedded_postgres

    return start_embedded_postgres(str(tmp_path_factory.mktemp("pg") / "data"))


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    # cache=False: structlog.testing.capture_logs must see every logger's calls.
    configure_logging(LoggingConfig(level="debug", format="json"), cache=False)


@pytest.fixture(autouse=True)
def _clear_log_context() -> Iterator[None]:
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()


async def _admin(pg_server_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(pg_server_url)


@pytest.fixture
async def empty_database_url(pg_server_url: str) -> AsyncIterator[str]:
    """A brand-new database with no tables, dropped after the test."""
    name = "authproxy_test_" + secrets.token_hex(6)
    admin = await _admin(pg_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(pg_server_url, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(empty_database_url: str) -> str:
    """A fresh database with every migration applied."""
    conn = await asyncpg.connect(empty_database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return empty_database_url


@pytest.fixture
def hasher() -> KeyHasher:
    return KeyHasher(argon2.PasswordHasher.from_parameters(argon2.profiles.CHEAPEST))


class Upstream:
    """The recording upstream as the tests see it."""

    def __init__(self, server: TestServer) -> None:
        self.server = server
        self.url = str(server.make_url("/")).rstrip("/")

    @property
    def recorder(self) -> Recorder:
        return self.server.app[RECORDER]

    @property
    def requests(self) -> list[Any]:
        return self.recorder.requests


@pytest.fixture
async def upstream(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Upstream:
    return Upstream(await aiohttp_server(create_recording_upstream()))


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in overrides.items():
        merged.setdefault(section, {}).update(values)
    return merged


MakeConfig = Callable[..., Config]


@pytest.fixture
def make_config(database_url: str, upstream: Upstream) -> MakeConfig:
    """make_config(cache={"ttl": 0}, ...) -> Config for this test's database and upstream."""

    def make(**sections: dict[str, Any]) -> Config:
        base = {
            "db": {"url": database_url},
            "upstream": {"url": upstream.url},
            "hashing": CHEAP_HASHING,
            "usage": {"flush_interval": 0.1},
            "server": {"fast_path": FAST_PATH},
        }
        return build_config(_merge(base, sections), environ={})

    return make


AppClient = Callable[..., Awaitable[TestClient[Any, Any]]]


class AccessLines:
    """A daemon's access log, written to a file instead of stderr (app_client's
    ``access_log=``), read back as the JSON objects its lines are."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def lines(self) -> list[dict[str, Any]]:
        text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The first ``count`` lines, once the writer thread has written them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(lines := self.lines()) < count:
            assert loop.time() < deadline, f"{len(lines)} access lines, expected {count}"
            await asyncio.sleep(0.01)
        return lines

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def access_lines(tmp_path: Path) -> Iterator[Callable[[str], AccessLines]]:
    """access_lines(name) -> an AccessLines in this test's temp dir."""
    made: list[AccessLines] = []

    def make(name: str) -> AccessLines:
        made.append(AccessLines(tmp_path / f"{name}.access.log"))
        return made[-1]

    yield make
    for lines in made:
        lines.close()


class DaemonTestServer(TestServer):
    """aiohttp's TestServer with the daemon's own connection layer (server/guards.py):
    the fast path, the limits and the JSON protocol errors are what tests talk to."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        # aiohttp's TestServer cancels a handler whose client left; the daemon's runner
        # does not (aiohttp's default), and tests see what the daemon does.
        kwargs["handler_cancellation"] = False
        built = self.app[COMPONENTS]
        return GuardedAppRunner(
            self.app,
            guard=Guard.from_config(built.config.server),
            answers=built.fast_front,
            **kwargs,
        )


@pytest.fixture
def app_client(
    make_config: MakeConfig,
    hasher: KeyHasher,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
) -> AppClient:
    # Parameter order matters: aiohttp_client is set up after the database and upstream,
    # so the app (and its final last_used flush) is torn down before they are.
    """app_client(cfg=None, **sections): the daemon's app on a real loopback server."""

    async def start(
        cfg: Config | None = None, *, access_log: AccessLines | None = None, **sections: Any
    ) -> TestClient[Any, Any]:
        if access_log is not None:  # every line handed to the writer at once
            sections["logging"] = {"access_buffer_bytes": 0, **sections.get("logging", {})}
        app = create_app(
            cfg or make_config(**sections),
            hasher=hasher,
            access_log_fd=2 if access_log is None else access_log.fd,
        )
        client = await aiohttp_client(DaemonTestServer(app))
        # As a load balancer waits for readyz: the revocation listener's first connect
        # flushes the cache, and a key verified just before it would not stay cached.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(app[COMPONENTS].listener.connected.wait(), 2)
        return client

    return start


@pytest.fixture
async def client(app_client: AppClient) -> TestClient[Any, Any]:
    return await app_client()


@pytest.fixture
async def launcher(
    tmp_path: Path, database_url: str, upstream: Upstream
) -> AsyncIterator[DaemonLauncher]:
    """Starts real daemon processes (and runs the CLI) against this test's database."""
    async with DaemonLauncher(
        tmp_path, database_url=database_url, upstream_url=upstream.url
    ) as launcher:
        yield launcher


async def new_key(
    client: TestClient[Any, Any],
    space: str = "plant-7",
    name: str = "test key",
    expires_at: str | None = None,
) -> CreatedKey:
    created: CreatedKey = await client.app[COMPONENTS].keys.create(
        space_id=space, name=name, expires_at=expires_at, audit=AuditContext(actor="test")
    )
    return created


async def expire_in_database(database_url: str, key_id: str) -> None:
    """Put a key's expires_at an hour in the past, in PostgreSQL itself: the API and the
    CLI only accept expiries in the future."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 hour' WHERE id = $1::uuid",
            key_id,
        )
    finally:
        await conn.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def refusing_connections(database_url: str) -> AsyncIterator[None]:
    """This test's own database refuses connections (SQLSTATE 55000) and drops the ones
    it has, as during a restore: a real outage of one database, the server untouched."""
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(with_database(database_url, "postgres"))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
