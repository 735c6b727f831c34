"""What each CLI command does, once main.py has parsed arguments and loaded config."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from yarl import URL

from authproxy.app import COMPONENTS, Components, create_app
from authproxy.auth.cache import VerifiedKeyCache
from authproxy.auth.verdict import VerdictCodec
from authproxy.cli.sample_upstream import create_sample_upstream
from authproxy.config.schema import Config
from authproxy.db.migrations import migrate as apply_migrations
from authproxy.db.pool import create_pool
from authproxy.db.pooler import Connector
from authproxy.errors import StoreUnavailable
from authproxy.keys.audit import AuditContext
from authproxy.keys.durations import parse_duration
from authproxy.keys.format import KeyHasher, ParsedKey
from authproxy.keys.rolls import GRACE_MAX
from authproxy.keys.service import CreatedKey, KeyService, key_object
from authproxy.keys.store import Store
from authproxy.server import runner as server

log = structlog.get_logger(__name__)

DEMO_SPACE = "demo"


def serve(cfg: Config, *, worker: bool = False, config_path: str | None = None) -> int:
    if cfg.server.workers > 1 and not worker:
        from authproxy.server.supervisor import supervise

        return supervise(cfg, config_path, migrate=migrate)
    if worker:
        from authproxy.server.supervisor import die_with_parent

        die_with_parent()
    # A supervised worker shares the port (SO_REUSEPORT); the supervisor migrated already.
    return _serve(create_app(cfg), reuse_port=worker)


def _serve(app: web.Application, *, reuse_port: bool = False) -> int:
    c = app[COMPONENTS]
    return server.serve(
        app,
        c.config,
        readiness=c.readiness,
        answers=c.fast_front,
        reuse_port=reuse_port,
        tls=c.listener_tls,
    )


def demo(cfg: Config) -> int:
    """Serve with a sample upstream on upstream.url and print a first key once."""
    app = create_app(cfg)
    c = app[COMPONENTS]
    app.cleanup_ctx.append(_sample_upstream_ctx(cfg))
    app.on_startup.append(_announce_first_key(c))
    return _serve(app)


def _sample_upstream_ctx(cfg: Config) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(_: web.Application) -> AsyncIterator[None]:
        upstream = URL(cfg.upstream.url)
        runner = web.AppRunner(create_sample_upstream(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, upstream.host, upstream.port).start()
        yield
        await runner.cleanup()

    return ctx


def _announce_first_key(c: Components) -> Callable[[web.Application], Awaitable[None]]:
    async def on_startup(_: web.Application) -> None:
        created = await c.keys.create(
            space_id=DEMO_SPACE, name="demo key", audit=AuditContext(actor="cli:demo")
        )
        _print_first_key(c.config, created.key)

    return on_startup


def _print_first_key(cfg: Config, key: str) -> None:
    base = f"http://{cfg.server.listen}"
    print(
        f"""
authproxy demo: proxy on {base}, sample upstream on {cfg.upstream.url}
A first API key for space '{DEMO_SPACE}' (shown once, copy it now):

    {key}

Try it through the proxy:

    curl -s -H 'Authorization: Bearer {key}' {base}/api/v1/historian/points

Health: curl -s {base}/_authproxy/healthz   Stop: Ctrl-C
""",
        file=sys.stderr,
        flush=True,
    )


@asynccontextmanager
async def _key_service(cfg: Config) -> AsyncIterator[KeyService]:
    try:
        pool = await create_pool(cfg)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        if cfg.db.should_migrate_on_start:
            async with pool.acquire() as conn:
                await apply_migrations(conn)
        with ThreadPoolExecutor(max_workers=1) as executor:
            yield KeyService(
                store=Store(pool, query_timeout=cfg.db.query_timeout),
                hasher=KeyHasher.from_config(cfg.hashing),
                executor=executor,
                cache=VerifiedKeyCache(max_entries=0, codec=VerdictCodec()),
            )
    finally:
        await pool.close()


async def migrate(cfg: Config) -> dict[str, Any]:
    try:
        conn = await Connector(cfg).connect(cfg.db.url, timeout=cfg.db.connect_timeout)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        applied = await apply_migrations(conn)
        current = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    finally:
        await conn.close()
    return {"applied": [f"{m.version:03d}_{m.name}" for m in applied], "version": current}


async def _shown_once(
    cfg: Config, make: Callable[[KeyService], Awaitable[CreatedKey]]
) -> dict[str, Any]:
    """The key object of a key ``make`` creates, with the key: the one time it is shown."""
    async with _key_service(cfg) as keys:
        created = await make(keys)
        return key_object(created.record, keys.now(), key=created.key)


async def create_key(
    cfg: Config, space: str, name: str, expires_at: str | None, rate_limit: float | None = None
) -> dict[str, Any]:
    return await _shown_once(
        cfg,
        lambda keys: keys.create(
            space_id=space,
            name=name,
            expires_at=expires_at,
            rate_limit=rate_limit,
            audit=AuditContext.for_cli(),
        ),
    )


async def list_keys(cfg: Config, space: str, unused_for: str | None = None) -> dict[str, Any]:
    async with _key_service(cfg) as keys:
        records = await keys.list_keys(space, unused_for=unused_for)
        now = keys.now()
        return {"keys": [key_object(r, now) for r in records]}


async def roll_key(
    cfg: Config, space: str, key_id: str, grace: str | None, name: str | None
) -> dict[str, Any]:
    grace_seconds = None if grace is None else parse_duration(grace, "grace", high=GRACE_MAX)
    return await _shown_once(
        cfg,
        lambda keys: keys.roll(
            space_id=space,
            key_id=key_id,
            grace_seconds=grace_seconds,
            name=name,
            audit=AuditContext.for_cli(),
        ),
    )


async def leak_statuses(cfg: Config, found: list[ParsedKey]) -> list[str]:
    async with _key_service(cfg) as keys:
        return list(await keys.leak_statuses(found))


async def revoke_key(cfg: Config, space: str, key_id: str) -> dict[str, Any]:
    async with _key_service(cfg) as keys:
        revoked = await keys.revoke(space_id=space, key_id=key_id, audit=AuditContext.for_cli())
        return key_object(revoked, keys.now())
