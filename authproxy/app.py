"""The composition root: ``create_app(config)`` builds every component and wires them.

Each component gets what it uses as constructor arguments, here and nowhere else; no
component looks another one up at request time. What needs the running event loop (the
PostgreSQL pool, the revocation listener, the usage flusher, the metrics listener) starts
and stops in the cleanup contexts at the end of this module.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import asyncpg
import structlog
from aiohttp import web
from yarl import URL

from authproxy.admin.api import AdminApi
from authproxy.admin.tokens import AdminTokenVerifier
from authproxy.auth.authenticator import Authenticator
from authproxy.auth.cache import VerifiedKeyCache
from authproxy.auth.limits import FailureLimiter, KeyRateLimiter
from authproxy.auth.live import LiveConnections
from authproxy.auth.revocations import RevocationListener
from authproxy.auth.usage import UsageRecorder
from authproxy.auth.verdict import Verdict, VerdictCodec
from authproxy.config.schema import Config
from authproxy.db.pool import create_pool, prepare_schema
from authproxy.http.admission import Admission
from authproxy.http.aio.continuation import defer_continue
from authproxy.http.aio.front import PROXY_ROUTE, entry, handler_args, not_ours
from authproxy.http.aio.health import Health, Readiness, metrics_handler
from authproxy.http.fast.exchange import FastFront
from authproxy.http.headers import normalized, parse_networks
from authproxy.http.lifecycle import RequestLifecycle
from authproxy.http.live_answers import LiveAnswers
from authproxy.http.reserved import RESERVED_PREFIX
from authproxy.keys.format import KeyHasher
from authproxy.keys.service import KeyService
from authproxy.keys.store import Store
from authproxy.keys.unused import UnusedKeysGauge
from authproxy.observability.access_log import AccessLog
from authproxy.observability.logs import logs_access, uses_console
from authproxy.observability.metrics import Metrics
from authproxy.tls.contexts import client_context
from authproxy.tls.listener import ListenerCertificate
from authproxy.ui.page import KeysPage
from authproxy.upstream.h1pool import H1Transport
from authproxy.upstream.transport import ClientSessionTransport, UpstreamTransport

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, repr=False)
class Components:
    """Everything create_app built, for the CLI (demo key, serving) and for tests.

    No repr: the config holds secrets (admin.jwt_secret, db.url), and a failed assertion
    or a traceback would print them.
    """

    config: Config
    metrics: Metrics
    cache: VerifiedKeyCache[Verdict]
    usage: UsageRecorder
    readiness: Readiness
    executor: ThreadPoolExecutor
    store: Store
    authenticator: Authenticator
    keys: KeyService
    unused_keys: UnusedKeysGauge
    listener: RevocationListener
    live: LiveConnections
    transport: UpstreamTransport
    access_log: AccessLog | None
    lifecycle: RequestLifecycle
    fast_front: FastFront
    listener_tls: ListenerCertificate | None  # None: the listener speaks plain HTTP


# The one application key: what the composition root built. No handler reads it.
COMPONENTS: Final = web.AppKey("components", Components)


def create_app(
    cfg: Config,
    *,
    hasher: KeyHasher | None = None,
    wall_clock: Callable[[], datetime] | None = None,
    access_log_fd: int = 2,
) -> web.Application:
    """Build the whole daemon. Overrides exist for tests (cheap hashing, controlled time).

    ``cfg.db.url`` must name a database; the CLI resolves the embedded default first.
    """
    if cfg.db.url is None:
        raise ValueError("create_app needs cfg.db.url; resolve the embedded database first")
    c = build_components(
        cfg,
        hasher=hasher or KeyHasher.from_config(cfg.hashing),
        clock=wall_clock or (lambda: datetime.now(UTC)),
        access_log_fd=access_log_fd,
    )
    # client_max_size caps request.read(), used only by the admin API; proxied bodies stream.
    app = web.Application(
        middlewares=[entry(c.lifecycle)],
        client_max_size=cfg.admin.max_body_bytes,
        handler_args=handler_args(cfg),
    )
    app[COMPONENTS] = c
    app.cleanup_ctx.extend(
        # The access log first: it is closed last, after every request's line.
        [
            _access_log_ctx(c),
            _executor_ctx(c),
            _database_ctx(c),
            _transport_ctx(c),
            _metrics_listener_ctx(c),
        ]
    )
    app.on_shutdown.append(_start_draining(c.readiness))
    app.on_shutdown.append(_close_tunnels(c))
    trusted = parse_networks(cfg.server.trusted_proxies)
    Health(readiness=c.readiness, store=c.store, listener=c.listener, metrics=c.metrics).add_routes(
        app.router, RESERVED_PREFIX
    )
    if cfg.metrics.enabled and cfg.metrics.listen is None:
        app.router.add_get(
            RESERVED_PREFIX + "metrics", metrics_handler(c.metrics), expect_handler=defer_continue
        )
    AdminApi(
        keys=c.keys,
        tokens=AdminTokenVerifier(cfg.admin),
        manager_roles=cfg.admin.manager_roles,
        trusted_proxies=trusted,
    ).add_routes(app.router)
    if cfg.ui.enabled:
        KeysPage(cfg.ui).add_routes(app.router)
    # Every other path: the middleware proxies what is outside the reserved prefix;
    # a reserved path no route above serves gets 404/405.
    app.router.add_route(
        "*", "/{tail:.*}", not_ours, name=PROXY_ROUTE, expect_handler=defer_continue
    )
    return app


def build_components(
    cfg: Config, *, hasher: KeyHasher, clock: Callable[[], datetime], access_log_fd: int = 2
) -> Components:
    """Every component, each given what it uses. Nothing here needs the event loop.

    Raises:
        ConfigError: a TLS file (listener or upstream) cannot be loaded.
    """
    metrics = Metrics()
    log_access = logs_access(cfg.logging)
    # JSON lines are the access log's own (batched, off the loop); the console format
    # is for a person at a terminal, where structlog renders them as before.
    access_log = (
        AccessLog(
            dropped=metrics.access_log_dropped,
            fd=access_log_fd,
            buffer_bytes=cfg.logging.access_buffer_bytes,
            flush_interval=cfg.logging.access_flush_interval,
        )
        if log_access and not uses_console(cfg.logging)
        else None
    )
    cache = VerifiedKeyCache[Verdict](max_entries=cfg.cache.max_entries, codec=VerdictCodec())
    cache.on_evict = lambda reason: metrics.cache_evictions.labels(reason=reason).inc()
    usage = UsageRecorder(metrics, max_pending=cfg.usage.max_pending)
    # A bounded pool: argon2 is CPU work, and a flood of wrong keys must not take every core.
    executor = ThreadPoolExecutor(
        max_workers=cfg.hashing.max_concurrency, thread_name_prefix="argon2"
    )
    store = Store(query_timeout=cfg.db.query_timeout)  # opened by _database_ctx
    authenticator = Authenticator(
        store=store,
        cache=cache,
        hasher=hasher,
        executor=executor,
        usage=usage,
        settings=cfg.cache,
        metrics=metrics,
        max_pending=cfg.hashing.max_pending,
        wall_clock=clock,
    )
    keys = KeyService(store=store, hasher=hasher, executor=executor, cache=cache, wall_clock=clock)
    live = LiveConnections(metrics=metrics, wall_clock=clock, still_valid=store.active_key_ids)
    unused_keys = UnusedKeysGauge(
        store=store,
        gauge=metrics.keys_unused,
        interval=cfg.keys.unused_gauge_interval,
        wall_clock=clock,
    )
    # Its own session: through a transaction pooler, db.listen_url names PostgreSQL itself.
    listener = RevocationListener(
        dsn=str(cfg.db.listen_dsn),
        cache=cache,
        metrics=metrics,
        connect_timeout=cfg.db.connect_timeout,
        live=live,
    )
    up = cfg.upstream
    tls = None
    if up.is_https:
        tls, client_facts = client_context(up)
        if client_facts is not None:
            expiry = metrics.tls_certificate_expiry.labels(certificate="upstream_client")
            expiry.set(client_facts.not_after.timestamp())
    transport: UpstreamTransport = (
        H1Transport(up, tls=tls) if up.transport == "h1" else ClientSessionTransport(up, tls=tls)
    )
    # WebSocket handshakes take a dedicated raw connection whatever the transport.
    upgrades = transport if isinstance(transport, H1Transport) else H1Transport(up, tls=tls)
    admission = Admission(
        authenticator=authenticator,
        failures=FailureLimiter(
            threshold=cfg.limits.failure_threshold,
            window=cfg.limits.failure_window,
            max_clients=cfg.limits.max_tracked_clients,
        ),
        key_limits=KeyRateLimiter(
            burst_seconds=cfg.limits.key_burst_seconds, max_keys=cfg.limits.max_tracked_keys
        ),
        default_rate=cfg.limits.key_rate_per_second,
        burst_seconds=cfg.limits.key_burst_seconds,
        trusted_proxies=parse_networks(cfg.server.trusted_proxies),
        metrics=metrics,
    )
    strip_prefixes = tuple(normalized(p) for p in up.strip_header_prefixes)
    lifecycle = RequestLifecycle(
        admission=admission,
        transport=transport,
        metrics=metrics,
        strip_prefixes=strip_prefixes,
        max_body_bytes=cfg.server.max_body_bytes,
        live_answers=LiveAnswers(
            admission=admission,
            live=live,
            upgrades=upgrades,
            metrics=metrics,
            strip_prefixes=strip_prefixes,
            tunnel_idle_timeout=cfg.server.tunnel_idle_timeout,
        ),
        log_access=log_access,
        access_log=access_log,
    )
    return Components(
        config=cfg,
        metrics=metrics,
        cache=cache,
        usage=usage,
        readiness=Readiness(),
        executor=executor,
        store=store,
        authenticator=authenticator,
        keys=keys,
        unused_keys=unused_keys,
        listener=listener,
        live=live,
        transport=transport,
        access_log=access_log,
        lifecycle=lifecycle,
        fast_front=FastFront(lifecycle),
        listener_tls=ListenerCertificate(
            cfg.server, expiry=metrics.tls_certificate_expiry.labels(certificate="listener")
        )
        if cfg.server.is_tls
        else None,
    )


# -- what lives as long as the app: opened in a cleanup context, closed in it

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def _start_draining(readiness: Readiness) -> Callable[[web.Application], Awaitable[None]]:
    async def on_shutdown(_: web.Application) -> None:
        readiness.draining = True

    return on_shutdown


def _close_tunnels(c: Components) -> Callable[[web.Application], Awaitable[None]]:
    async def on_shutdown(_: web.Application) -> None:
        # After the drain, the listener closed: tunnels get a close frame 1001 now,
        # while answers in progress get server.shutdown_timeout.
        c.lifecycle.close_tunnels()
        c.live.close()

    return on_shutdown


def _access_log_ctx(c: Components) -> CleanupContext:
    async def ctx(_: web.Application) -> AsyncIterator[None]:
        if c.access_log is None:
            yield
            return
        c.access_log.start()
        yield
        await c.access_log.close()  # every line written, or counted as dropped

    return ctx


def _executor_ctx(c: Components) -> CleanupContext:
    async def ctx(_: web.Application) -> AsyncIterator[None]:
        yield
        c.executor.shutdown(wait=True, cancel_futures=True)

    return ctx


def _database_ctx(c: Components) -> CleanupContext:
    async def ctx(_: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(c.config)
        c.store.open(pool)
        await prepare_schema(c.config, pool)
        tasks = [asyncio.create_task(c.listener.run()), asyncio.create_task(_housekeeping(c, pool))]
        if c.config.metrics.enabled:
            tasks.append(asyncio.create_task(c.unused_keys.run()))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await c.usage.flush(c.store)  # the last uses of this process are not lost
        await pool.close()

    return ctx


def _update_pool_gauge(metrics: Metrics, pool: asyncpg.Pool) -> None:
    size, idle = pool.get_size(), pool.get_idle_size()
    metrics.db_pool.labels(state="in_use").set(size - idle)
    metrics.db_pool.labels(state="idle").set(idle)


async def _housekeeping(c: Components, pool: asyncpg.Pool) -> None:
    """Every usage.flush_interval, or sooner once usage.max_pending keys wait: write
    last_used_at (statements of up to 10,000 rows), refresh gauges."""
    while True:
        await c.usage.due(c.config.usage.flush_interval)
        try:
            await c.usage.flush(c.store)
        except Exception:  # noqa: BLE001 - this loop must outlive any one failed flush
            log.error("last_used_flush_crashed", exc_info=True)
        _update_pool_gauge(c.metrics, pool)


def _transport_ctx(c: Components) -> CleanupContext:
    async def ctx(_: web.Application) -> AsyncIterator[None]:
        yield
        await c.transport.close()

    return ctx


def _metrics_listener_ctx(c: Components) -> CleanupContext:
    """With metrics.listen set, /_authproxy/metrics is served there and only there."""

    async def ctx(_: web.Application) -> AsyncIterator[None]:
        cfg = c.config.metrics
        if not cfg.enabled or cfg.listen is None:
            yield
            return
        metrics_app = web.Application()
        metrics_app.router.add_get(RESERVED_PREFIX + "metrics", metrics_handler(c.metrics))
        runner = web.AppRunner(metrics_app, access_log=None)
        await runner.setup()
        listen = URL(f"http://{cfg.listen}")
        await web.TCPSite(runner, listen.host, listen.port, reuse_port=True).start()
        yield
        await runner.cleanup()

    return ctx
