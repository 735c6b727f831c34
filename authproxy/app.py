"""The composition root: create_app(config) wires every component into one aiohttp app."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from authproxy import contexts
from authproxy.admin import api as admin
from authproxy.admin.tokens import AdminTokenVerifier
from authproxy.appkeys import (
    ADMIN_TOKENS,
    CACHE,
    CONFIG,
    FAILURES,
    HASHER,
    KEY_LIMITS,
    LIFECYCLE,
    METRICS,
    STRIP_PREFIXES,
    TRUSTED_PROXIES,
    USAGE,
)
from authproxy.auth.cache import VerifiedKeyCache
from authproxy.auth.limits import FailureLimiter, KeyRateLimiter
from authproxy.auth.usage import UsageRecorder
from authproxy.auth.verdict import Verdict, VerdictCodec
from authproxy.config.schema import Config
from authproxy.http import health
from authproxy.http.aio.continuation import defer_continue
from authproxy.http.aio.proxy import proxy_handler
from authproxy.http.errormap import json_error
from authproxy.http.headers import normalized, parse_networks
from authproxy.keys.format import KeyHasher
from authproxy.observability.logs import add_request_id, request_context
from authproxy.observability.metrics import Metrics
from authproxy.server.lifecycle import Lifecycle

log = structlog.get_logger(__name__)

RESERVED_PREFIX = "/_authproxy/"
_PROXY_ROUTE = "proxy"
NOT_FOUND_MESSAGE = "No such authproxy endpoint."


def is_reserved(raw_path: str) -> bool:
    """Matched on the raw path, so no encoded or dotted spelling reaches the admin API."""
    path = raw_path.split("?", 1)[0]
    return path == RESERVED_PREFIX.rstrip("/") or path.startswith(RESERVED_PREFIX)


@web.middleware
async def entry(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware: request context and logging (log.py) around the dispatch.

    One layer instead of two: each aiohttp middleware costs a wrapper and a coroutine on
    every request, and this runs on every proxied request.
    """
    return await request_context(request, _dispatch(request, handler))


def _dispatch(request: web.Request, handler: Handler) -> Handler:
    """Reserved prefix -> our routes; everything else -> the proxy, whatever the router thinks."""
    if not is_reserved(request.raw_path):
        return proxy_handler
    if request.match_info.route.name == _PROXY_ROUTE:
        return _not_ours
    return handler


async def _not_ours(request: web.Request) -> web.StreamResponse:
    """A reserved path no route serves: 405 if another method would fit, else 404."""
    allowed = await _methods_for(request)
    if allowed:
        return json_error(405, "method_not_allowed", f"Use {', '.join(sorted(allowed))}.",
                          {"Allow": ", ".join(sorted(allowed))})
    return json_error(404, "not_found", NOT_FOUND_MESSAGE)


async def _methods_for(request: web.Request) -> set[str]:
    """Methods our own routes accept for this path (empty: the path is not ours)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.name == _PROXY_ROUTE:
            continue
        match, methods = await resource.resolve(request)
        if match is None:
            allowed |= methods
    return allowed


def handler_args(cfg: Config) -> dict[str, float | bool]:
    """Limits of aiohttp's HTTP parser and connection handling, from config."""
    return {
        # 0: a body nobody read (a refused upload) is not drained to keep the connection
        # alive; the connection is closed instead.
        "lingering_time": 0,
        # Bodies are forwarded as sent (issue 13): aiohttp must not inflate a gzip or
        # deflate upload, which would go upstream under the client's Content-Length.
        "auto_decompress": False,
        "keepalive_timeout": cfg.server.idle_timeout,
        "max_line_size": cfg.server.max_url_bytes,
        "max_field_size": cfg.server.max_header_bytes,
        "max_headers": cfg.server.max_headers,
    }


def create_app(cfg: Config, *, hasher: KeyHasher | None = None,
               wall_clock: Callable[[], datetime] | None = None) -> web.Application:
    """Build the whole daemon. Overrides exist for tests (cheap hashing, controlled time).

    ``cfg.db.url`` must name a database; the CLI resolves the embedded default first.
    """
    if cfg.db.url is None:
        raise ValueError("create_app needs cfg.db.url; resolve the embedded database first")
    # client_max_size caps request.read(), used only by the admin API; proxied bodies stream.
    app = web.Application(middlewares=[entry],
                          client_max_size=cfg.admin.max_body_bytes,
                          handler_args=handler_args(cfg))
    app[CONFIG] = cfg
    app[ADMIN_TOKENS] = AdminTokenVerifier(cfg.admin)
    app[HASHER] = hasher or KeyHasher.from_config(cfg.hashing)
    app[METRICS] = metrics = Metrics()
    app[CACHE] = VerifiedKeyCache[Verdict](max_entries=cfg.cache.max_entries,
                                           codec=VerdictCodec())
    app[CACHE].on_evict = lambda reason: metrics.cache_evictions.labels(reason=reason).inc()
    app[USAGE] = UsageRecorder(metrics, max_pending=cfg.usage.max_pending)
    app[LIFECYCLE] = Lifecycle()
    app[TRUSTED_PROXIES] = parse_networks(cfg.server.trusted_proxies)
    app[STRIP_PREFIXES] = tuple(normalized(p) for p in cfg.upstream.strip_header_prefixes)
    app[FAILURES] = FailureLimiter(threshold=cfg.limits.failure_threshold,
                                   window=cfg.limits.failure_window,
                                   max_clients=cfg.limits.max_tracked_clients)
    app[KEY_LIMITS] = KeyRateLimiter(burst_seconds=cfg.limits.key_burst_seconds,
                                     max_keys=cfg.limits.max_tracked_keys)
    clock = wall_clock or (lambda: datetime.now(UTC))
    app.cleanup_ctx.extend([contexts.executor_ctx, contexts.database_ctx(clock),
                            contexts.transport_ctx, contexts.metrics_listener_ctx])
    app.on_response_prepare.append(add_request_id)
    app.on_shutdown.append(contexts.start_draining)
    health.add_routes(app, RESERVED_PREFIX)
    if cfg.metrics.enabled and cfg.metrics.listen is None:
        app.router.add_get(RESERVED_PREFIX + "metrics", health.metrics,
                           expect_handler=defer_continue)
    admin.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", proxy_handler, name=_PROXY_ROUTE,
                         expect_handler=defer_continue)
    return app
