"""The composition root: create_app(config) wires every component into one aiohttp app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import asyncpg
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from authproxy import admin, health
from authproxy.admintoken import AdminTokenVerifier
from authproxy.appkeys import (
    ADMIN_TOKENS,
    AUTHENTICATOR,
    CACHE,
    CONFIG,
    EXECUTOR,
    HASHER,
    KEYS,
    LIFECYCLE,
    STORE,
    TRANSPORT,
    USAGE,
)
from authproxy.auth import Authenticator, CacheValue
from authproxy.cache import VerifiedKeyCache
from authproxy.config import Config
from authproxy.errors import StoreUnavailable
from authproxy.httperrors import json_error
from authproxy.keys import KeyHasher
from authproxy.keyservice import KeyService
from authproxy.log import add_request_id, request_context
from authproxy.migrations import migrate
from authproxy.proxy import proxy_handler
from authproxy.state import Lifecycle
from authproxy.store import Store
from authproxy.upstream import ClientSessionTransport
from authproxy.usage import UsageRecorder

log = structlog.get_logger(__name__)

RESERVED_PREFIX = "/_authproxy/"
_PROXY_ROUTE = "proxy"
NOT_FOUND_MESSAGE = "No such authproxy endpoint."


def is_reserved(raw_path: str) -> bool:
    """Matched on the raw path, so no encoded or dotted spelling reaches the admin API."""
    path = raw_path.split("?", 1)[0]
    return path == RESERVED_PREFIX.rstrip("/") or path.startswith(RESERVED_PREFIX)


@web.middleware
async def dispatch(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reserved prefix -> our routes; everything else -> the proxy, whatever the router thinks."""
    if not is_reserved(request.raw_path):
        return await proxy_handler(request)
    if request.match_info.route.name == _PROXY_ROUTE:
        return json_error(404, "not_found", NOT_FOUND_MESSAGE)
    return await handler(request)


def create_app(cfg: Config, *, hasher: KeyHasher | None = None,
               wall_clock: Callable[[], datetime] | None = None) -> web.Application:
    """Build the whole daemon. Overrides exist for tests (cheap hashing, controlled time).

    ``cfg.db.url`` must name a database; the CLI resolves the embedded default first.
    """
    if cfg.db.url is None:
        raise ValueError("create_app needs cfg.db.url; resolve the embedded database first")
    # client_max_size caps request.read(), used only by the admin API; proxied bodies stream.
    app = web.Application(middlewares=[request_context, dispatch],
                          client_max_size=cfg.admin.max_body_bytes)
    app[CONFIG] = cfg
    app[ADMIN_TOKENS] = AdminTokenVerifier(cfg.admin)
    app[HASHER] = hasher or KeyHasher.from_config(cfg.hashing)
    app[CACHE] = VerifiedKeyCache[CacheValue](max_entries=cfg.cache.max_entries)
    app[USAGE] = UsageRecorder()
    app[LIFECYCLE] = Lifecycle()
    clock = wall_clock or (lambda: datetime.now(UTC))
    app.cleanup_ctx.extend([_executor_ctx, _database_ctx(clock), _transport_ctx])
    app.on_response_prepare.append(add_request_id)
    app.on_shutdown.append(_start_draining)
    health.add_routes(app, RESERVED_PREFIX)
    admin.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", proxy_handler, name=_PROXY_ROUTE)
    return app


async def _start_draining(app: web.Application) -> None:
    app[LIFECYCLE].draining = True


async def _executor_ctx(app: web.Application) -> AsyncIterator[None]:
    # A bounded pool: argon2 is CPU work, and a flood of wrong keys must not take every core.
    executor = ThreadPoolExecutor(max_workers=app[CONFIG].hashing.max_concurrency,
                                  thread_name_prefix="argon2")
    app[EXECUTOR] = executor
    yield
    executor.shutdown(wait=True, cancel_futures=True)


def _database_ctx(clock: Callable[[], datetime]
                  ) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        cfg = app[CONFIG]
        pool = await create_pool(cfg)
        store = Store(pool, query_timeout=cfg.db.query_timeout)
        app[STORE] = store
        await _prepare_schema(cfg, pool)
        app[AUTHENTICATOR] = Authenticator(
            store=store, cache=app[CACHE], hasher=app[HASHER], executor=app[EXECUTOR],
            usage=app[USAGE], cache_ttl=cfg.cache.ttl, negative_ttl=cfg.cache.negative_ttl,
            wall_clock=clock)
        app[KEYS] = KeyService(store=store, hasher=app[HASHER], executor=app[EXECUTOR],
                               cache=app[CACHE], wall_clock=clock)
        flusher = asyncio.create_task(app[USAGE].run(store, cfg.usage.flush_interval))
        yield
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await app[USAGE].flush(store)
        await pool.close()
    return ctx


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


async def _transport_ctx(app: web.Application) -> AsyncIterator[None]:
    transport = ClientSessionTransport(app[CONFIG].upstream)
    app[TRANSPORT] = transport
    yield
    await transport.close()
