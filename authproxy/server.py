"""Run one app on the event loop: uvloop, web.run_app, and a drain phase before stopping."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from authproxy.appkeys import CONFIG, LIFECYCLE
from authproxy.config import Config

log = structlog.get_logger(__name__)


def use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # not on this platform: the default loop works, only slower
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _graceful_exit() -> None:
    # GracefulExit is a SystemExit: raised from a loop callback it ends run_app's loop,
    # which then stops the listener, waits for in-flight requests and runs the cleanups.
    raise web.GracefulExit()


async def _install_drain_signals(app: web.Application) -> None:
    """Replace run_app's stop-at-once handlers: first signal drains, a second one stops."""
    loop = asyncio.get_running_loop()
    delay = app[CONFIG].server.drain_delay

    def on_signal(signum: int) -> None:
        lifecycle = app[LIFECYCLE]
        if lifecycle.draining:
            log.info("shutdown_now", signal=signal.Signals(signum).name)
            _graceful_exit()
        lifecycle.draining = True
        log.info("draining", signal=signal.Signals(signum).name, drain_delay=delay)
        loop.call_later(delay, _graceful_exit)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


def serve(app: web.Application, cfg: Config, *, reuse_port: bool = False) -> int:
    """Serve until SIGTERM/SIGINT; return 0 after a graceful stop."""
    use_uvloop()
    app.on_startup.append(_install_drain_signals)
    log.info("listening", listen=cfg.server.listen, upstream=cfg.upstream.url)
    web.run_app(app, host=cfg.server.host, port=cfg.server.port, access_log=None, print=None,
                shutdown_timeout=cfg.server.shutdown_timeout, reuse_port=reuse_port)
    log.info("stopped")
    return 0
