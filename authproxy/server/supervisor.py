"""`serve --workers N`: N worker processes on one port (SO_REUSEPORT) under one parent.

The parent resolves the database (and migrates) once, starts the workers with the same
config, restarts a worker that dies, forwards SIGTERM/SIGINT (and SIGHUP, which reloads
each worker's TLS certificate), and exits when all workers have stopped. Each worker has
its own cache and its own revocation listener; PostgreSQL keeps them consistent. Metrics
are merged through PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import structlog

from authproxy.config.schema import CONFIG_PATH_ENV, Config
from authproxy.observability.metrics import MULTIPROC_ENV
from authproxy.tls.contexts import server_context

log = structlog.get_logger(__name__)

_RESTART_BACKOFF_MAX = 10.0
_STABLE_AFTER = 5.0  # a worker alive this long resets the crash-loop backoff


@dataclass
class _Worker:
    slot: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    backoff: float = 0.5
    restart_at: float | None = None  # set while a dead worker waits out its backoff
    signalled: bool = False  # got the stop signal (a late-started worker must get it too)

    @property
    def running(self) -> bool:
        return self.restart_at is None and self.process.poll() is None


def die_with_parent() -> None:
    """In a worker: get SIGTERM (and so drain) if the supervisor dies, instead of living on
    as an orphan that keeps serving the port. Linux only; elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _spawn(slot: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A worker starts with SIGHUP ignored (an ignored signal stays ignored across exec)
    # until its loop handles it: a reload forwarded while it imports must not kill it.
    # It loads the certificate files as they are then, so it misses no reload.
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        # S603: argv is our own interpreter and module, no shell, no user input.
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "authproxy", "serve", "--worker"], env=env
        )
    finally:
        signal.signal(signal.SIGHUP, previous)
    log.info("worker_started", slot=slot, pid=process.pid)
    return process


def _worker_env(cfg: Config, metrics_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["AUTHPROXY_DATABASE_URL"] = str(cfg.db.url)  # the resolved (maybe embedded) database
    env[MULTIPROC_ENV] = metrics_dir
    return env


def supervise(
    cfg: Config,
    config_path: str | None = None,
    *,
    migrate: Callable[[Config], Coroutine[Any, Any, object]],
) -> int:
    """Run cfg.server.workers workers until a signal stops them; 0 if all stopped cleanly.

    ``migrate`` (the CLI's) runs once here, before the workers start, not in each.

    Raises:
        ConfigError: the listener's certificate cannot be loaded (checked here once, so
            that it is a start-up error rather than workers failing in a restart loop).
    """
    if cfg.server.is_tls:
        server_context(cfg.server)
    if cfg.db.should_migrate_on_start:
        asyncio.run(migrate(cfg))
    metrics_dir = tempfile.mkdtemp(prefix="authproxy-metrics-")
    env = _worker_env(cfg, metrics_dir)
    if config_path:
        env[CONFIG_PATH_ENV] = os.path.abspath(config_path)
    stopping: list[int] = []
    reloads: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # _watch forwards it on its next tick
        (reloads if signum == signal.SIGHUP else stopping).append(signum)

    workers = [_Worker(slot, _spawn(slot, env)) for slot in range(cfg.server.workers)]
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        return _watch(workers, env, stopping, reloads, cfg)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _watch(
    workers: list[_Worker],
    env: dict[str, str],
    stopping: list[int],
    reloads: list[int],
    cfg: Config,
) -> int:
    """Supervise until stopped. Never sleeps longer than a tick, so a signal is acted on
    at once: restarts are scheduled (restart_at), not waited for."""
    deadline: float | None = None
    killed = False
    forwarded = 0  # signals passed on so far: a second one means "stop now" to workers too
    while not stopping or any(w.running for w in workers):
        if stopping:
            if deadline is None:
                deadline = (
                    time.monotonic() + cfg.server.drain_delay + cfg.server.shutdown_timeout + 10
                )
                log.info("workers_stopping", signal=signal.Signals(stopping[0]).name)
            _signal_all(workers, stopping[-1], again=len(stopping) > forwarded > 0)
            forwarded = len(stopping)
            if time.monotonic() > deadline:
                killed = _kill_all(workers) or killed
        else:
            _reap_and_restart(workers, env)
        if reloads:
            reloads.clear()
            log.info("workers_reloading", signal="SIGHUP")
            for worker in workers:
                if worker.running:
                    worker.process.send_signal(signal.SIGHUP)
        time.sleep(0.1)
    # Workers that were waiting for a restart when the stop came are not failures.
    failed = killed or any(
        w.restart_at is None and w.process.returncode not in (0, None) for w in workers
    )
    log.info("workers_stopped", clean=not failed)
    return 1 if failed else 0


def _signal_all(workers: list[_Worker], signum: int, *, again: bool) -> None:
    for worker in workers:
        if worker.running and (again or not worker.signalled):
            worker.process.send_signal(signum)
            worker.signalled = True


def _kill_all(workers: list[_Worker]) -> bool:
    killed = False
    for worker in workers:
        if worker.running:
            log.warning("worker_killed", slot=worker.slot, pid=worker.process.pid)
            worker.process.kill()
            killed = True
    return killed


def _reap_and_restart(workers: list[_Worker], env: dict[str, str]) -> None:
    from prometheus_client import multiprocess

    now = time.monotonic()
    for worker in workers:
        if worker.restart_at is not None:
            if now >= worker.restart_at:
                worker.process = _spawn(worker.slot, env)
                worker.started, worker.restart_at, worker.signalled = now, None, False
            continue
        code = worker.process.poll()
        if code is None:
            continue
        lived = now - worker.started
        log.warning(
            "worker_died",
            slot=worker.slot,
            pid=worker.process.pid,
            exit_code=code,
            lived_seconds=round(lived, 1),
        )
        multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
            worker.process.pid, env[MULTIPROC_ENV]
        )
        if lived < _STABLE_AFTER:  # crash loop: back off instead of spinning
            worker.restart_at = now + worker.backoff
            worker.backoff = min(worker.backoff * 2, _RESTART_BACKOFF_MAX)
        else:
            worker.restart_at = now
            worker.backoff = 0.5
