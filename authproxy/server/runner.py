"""Run one app on the event loop: uvloop, our connection layer, a drain phase, a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal

import structlog
from aiohttp import web

from authproxy.config.schema import Config
from authproxy.http.aio.health import Readiness
from authproxy.http.fast.connection import Answers
from authproxy.server.guards import Guard, GuardedAppRunner
from authproxy.tls.listener import ListenerCertificate

log = structlog.get_logger(__name__)


def use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # not on this platform: the default loop works, only slower
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _freeze_startup_objects() -> None:
    """Move everything alive after startup out of the garbage collector's sight.

    Modules, the app, pools and metrics are a few hundred thousand objects that live as
    long as the process; every full collection walked them all, which showed as 10-20 ms
    stalls at the 99th percentile under load (issue 6). Frozen, they are never scanned.
    """
    gc.collect()
    gc.freeze()


def _graceful_exit() -> None:
    # GracefulExit is a SystemExit: raised from a loop callback it ends run_app's loop,
    # which then stops the listener, waits for in-flight requests and runs the cleanups.
    raise web.GracefulExit()


def _install_drain_signals(readiness: Readiness, delay: float) -> None:
    """Replace run_app's stop-at-once handlers: first signal drains, a second one stops."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if readiness.draining:
            log.info("shutdown_now", signal=signal.Signals(signum).name)
            _graceful_exit()
        readiness.draining = True
        log.info("draining", signal=signal.Signals(signum).name, drain_delay=delay)
        loop.call_later(delay, _graceful_exit)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


def _install_reload_signal(tls: ListenerCertificate | None) -> None:
    """SIGHUP: load the listener's certificate again (without TLS there is nothing to
    reload, and a stray SIGHUP must not end the daemon)."""
    loop = asyncio.get_running_loop()

    def on_sighup() -> None:
        if tls is None:
            log.info("reload_ignored", signal="SIGHUP", reason="no server.tls_cert_file")
            return
        tls.reload("sighup")

    loop.add_signal_handler(signal.SIGHUP, on_sighup)


async def _run(
    app: web.Application,
    cfg: Config,
    readiness: Readiness,
    answers: Answers,
    reuse_port: bool,
    tls: ListenerCertificate | None,
) -> None:
    runner = GuardedAppRunner(
        app,
        guard=Guard.from_config(cfg.server),
        answers=answers,
        handle_signals=True,
        access_log=None,
        shutdown_timeout=cfg.server.shutdown_timeout,
    )
    await runner.setup()
    _install_drain_signals(readiness, cfg.server.drain_delay)  # replaces the runner's own
    _install_reload_signal(tls)
    _freeze_startup_objects()
    watcher = None
    try:
        await web.TCPSite(
            runner,
            cfg.server.host,
            cfg.server.port,
            reuse_port=reuse_port,
            ssl_context=None if tls is None else tls.context,
        ).start()
        if tls is not None:
            watcher = asyncio.create_task(tls.watch(cfg.server.tls_reload_interval))
        log.info(
            "listening",
            listen=cfg.server.listen,
            scheme="https" if tls else "http",
            upstream=cfg.upstream.url,
        )
        await asyncio.Event().wait()  # until the drain ends with GracefulExit
    finally:
        if watcher is not None:
            watcher.cancel()
        await runner.cleanup()


def serve(
    app: web.Application,
    cfg: Config,
    *,
    readiness: Readiness,
    answers: Answers,
    reuse_port: bool = False,
    tls: ListenerCertificate | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; return 0 after a graceful stop. With ``tls``, the
    listener speaks only HTTPS, and SIGHUP reloads its certificate.

    This is web.run_app's loop, kept short, because run_app cannot take the runner that
    installs our connection layer (guards.py).
    """
    use_uvloop()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_run(app, cfg, readiness, answers, reuse_port, tls))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main)  # runs runner.cleanup(): drain, flush, close
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    log.info("stopped")
    return 0
