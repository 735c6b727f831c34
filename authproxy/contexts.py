"""Resources that live as long as the app: each opened in a cleanup context, closed in it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import asyncpg
import structlog
from aiohttp import web
from yarl import URL

from authproxy.appkeys import (
    AUTHENTICATOR,
    CACHE,
    CONFIG,
    EXECUTOR,
    HASHER,
    KEYS,
    LIFECYCLE,
    LISTENER,
    METRICS,
    STORE,
    TRANSPORT,
    USAGE,
)
from authproxy.auth.authenticator import Authenticator
from authproxy.auth.revocations import RevocationListener
from authproxy.config.schema import Config
from authproxy.db.migrations import migrate
from authproxy.errors import StoreUnavailable
from authproxy.http.health import metrics as metrics_handler
from authproxy.keys.service import KeyService
from authproxy.keys.store import Store
from authproxy.upstream.h1pool import H1Transport
from authproxy.upstream.transport import ClientSessionTransport, UpstreamTransport

log = structlog.get_logger(__name__)


async def start_draining(app: web.Application) -> None:
    app[LIFECYCLE].draining = True


async def executor_ctx(app: web.Application) -> AsyncIterator[None]:
    # A bounded pool: argon2 is CPU work, and a flood of wrong keys must not take every core.
    executor = ThreadPoolExecutor(max_workers=app[CONFIG].hashing.max_concurrency,
                                  thread_name_prefix="argon2")
    app[EXECUTOR] = executor
    yield
    executor.shutdown(wait=True, cancel_futures=True)


async def create_pool(cfg: Config) -> asyncpg.Pool:
    # min_size=0: the daemon starts (and serves cached keys, healthz) while PostgreSQL is
    # away, and connects as soon as it is back; readyz reports the difference.
    return await asyncpg.create_pool(
        cfg.db.url, min_size=0, max_size=cfg.db.max_pool,
        timeout=cfg.db.connect_timeout, command_timeout=cfg.db.query_timeout,
        max_inactive_connection_lifetime=300)


async def _prepare_schema(cfg: Config, pool: asyncpg.Pool) -> None:
    try:
        async with pool.acquire(timeout=cfg.db.connect_timeout) as conn:
            if cfg.db.should_migrate_on_start:
                await migrate(conn)
    except (TimeoutError, OSError, asyncpg.PostgresConnectionError) as exc:
        if cfg.db.should_migrate_on_start:
            raise StoreUnavailable(f"cannot apply migrations: {exc}") from exc
        log.warning("db_unreachable_at_start", error=str(exc))


def database_ctx(clock: Callable[[], datetime]
                 ) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        cfg = app[CONFIG]
        pool = await create_pool(cfg)
        store = Store(pool, query_timeout=cfg.db.query_timeout)
        app[STORE] = store
        await _prepare_schema(cfg, pool)
        app[AUTHENTICATOR] = Authenticator(
            store=store, cache=app[CACHE], hasher=app[HASHER], executor=app[EXECUTOR],
            usage=app[USAGE], settings=cfg.cache, metrics=app[METRICS],
            max_pending=cfg.hashing.max_pending, wall_clock=clock)
        app[KEYS] = KeyService(store=store, hasher=app[HASHER], executor=app[EXECUTOR],
                               cache=app[CACHE], wall_clock=clock)
        app[LISTENER] = RevocationListener(
            dsn=str(cfg.db.url), cache=app[CACHE], metrics=app[METRICS],
            connect_timeout=cfg.db.connect_timeout)
        tasks = [asyncio.create_task(app[LISTENER].run()),
                 asyncio.create_task(_housekeeping(app, pool))]
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await app[USAGE].flush(store)  # the last uses of this process are not lost
        await pool.close()
    return ctx


def update_pool_gauge(app: web.Application, pool: asyncpg.Pool) -> None:
    size, idle = pool.get_size(), pool.get_idle_size()
    app[METRICS].db_pool.labels(state="in_use").set(size - idle)
    app[METRICS].db_pool.labels(state="idle").set(idle)


async def _housekeeping(app: web.Application, pool: asyncpg.Pool) -> None:
    """Every usage.flush_interval, or sooner once usage.max_pending keys wait: write
    last_used_at (statements of up to 10,000 rows), refresh gauges."""
    while True:
        await app[USAGE].due(app[CONFIG].usage.flush_interval)
        try:
            await app[USAGE].flush(app[STORE])
        except Exception:  # noqa: BLE001 - this loop must outlive any one failed flush
            log.error("last_used_flush_crashed", exc_info=True)
        update_pool_gauge(app, pool)


async def transport_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG].upstream
    transport: UpstreamTransport = (
        H1Transport(cfg) if cfg.transport == "h1" else ClientSessionTransport(cfg))
    app[TRANSPORT] = transport
    yield
    await transport.close()


async def metrics_listener_ctx(app: web.Application) -> AsyncIterator[None]:
    """With metrics.listen set, /_authproxy/metrics is served there and only there."""
    cfg = app[CONFIG].metrics
    if not cfg.enabled or cfg.listen is None:
        yield
        return
    metrics_app = web.Application()
    metrics_app[METRICS] = app[METRICS]
    metrics_app.router.add_get("/_authproxy/metrics", metrics_handler)
    runner = web.AppRunner(metrics_app, access_log=None)
    await runner.setup()
    listen = URL(f"http://{cfg.listen}")
    await web.TCPSite(runner, listen.host, listen.port, reuse_port=True).start()
    yield
    await runner.cleanup()
