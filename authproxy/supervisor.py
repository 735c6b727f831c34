"""`serve --workers N`: N worker processes on one port (SO_REUSEPORT) under one parent.

The parent resolves the database (and migrates) once, starts the workers with the same
config, restarts a worker that dies, forwards SIGTERM/SIGINT, and exits when all workers
have stopped. Each worker has its own cache and its own revocation listener; PostgreSQL
keeps them consistent. Metrics are merged through PROMETHEUS_MULTIPROC_DIR.
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
from dataclasses import dataclass, field
from types import FrameType

import structlog

from authproxy.config import CONFIG_PATH_ENV, Config
from authproxy.metrics import MULTIPROC_ENV

log = structlog.get_logger(__name__)

_RESTART_BACKOFF_MAX = 10.0
_STABLE_AFTER = 5.0  # a worker alive this long resets the crash-loop backoff


@dataclass
class _Worker:
    slot: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    backoff: float = 0.5


def _spawn(slot: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # S603: argv is our own interpreter and module, no shell, no user input.
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "authproxy", "serve", "--worker"], env=env)
    log.info("worker_started", slot=slot, pid=process.pid)
    return process


def _worker_env(cfg: Config, metrics_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["AUTHPROXY_DATABASE_URL"] = str(cfg.db.url)  # the resolved (maybe embedded) database
    env[MULTIPROC_ENV] = metrics_dir
    return env


def supervise(cfg: Config, config_path: str | None = None) -> int:
    """Run cfg.server.workers workers until a signal stops them; 0 if all stopped cleanly."""
    from authproxy.commands import migrate

    if cfg.db.should_migrate_on_start:
        asyncio.run(migrate(cfg))
    metrics_dir = tempfile.mkdtemp(prefix="authproxy-metrics-")
    env = _worker_env(cfg, metrics_dir)
    if config_path:
        env[CONFIG_PATH_ENV] = os.path.abspath(config_path)
    stopping: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signum)

    workers = [_Worker(slot, _spawn(slot, env)) for slot in range(cfg.server.workers)]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return _watch(workers, env, stopping, cfg)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _watch(workers: list[_Worker], env: dict[str, str], stopping: list[int],
           cfg: Config) -> int:
    deadline: float | None = None
    failed = False
    while any(w.process.poll() is None for w in workers) or not stopping:
        if stopping and deadline is None:
            deadline = (time.monotonic() + cfg.server.drain_delay
                        + cfg.server.shutdown_timeout + 10)
            log.info("workers_stopping", signal=signal.Signals(stopping[0]).name)
        if deadline is not None and time.monotonic() > deadline:
            for worker in workers:
                if worker.process.poll() is None:
                    log.warning("worker_killed", slot=worker.slot, pid=worker.process.pid)
                    worker.process.kill()
            failed = True
        if not stopping:
            _restart_dead(workers, env)
        time.sleep(0.1)
    failed = failed or any(w.process.returncode != 0 for w in workers)
    log.info("workers_stopped", clean=not failed)
    return 1 if failed else 0


def _restart_dead(workers: list[_Worker], env: dict[str, str]) -> None:
    from prometheus_client import multiprocess

    for worker in workers:
        code = worker.process.poll()
        if code is None:
            continue
        lived = time.monotonic() - worker.started
        log.warning("worker_died", slot=worker.slot, pid=worker.process.pid, exit_code=code,
                    lived_seconds=round(lived, 1))
        multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
            worker.process.pid, env[MULTIPROC_ENV])
        if lived < _STABLE_AFTER:
            time.sleep(worker.backoff)  # crash loop: do not spin
            worker.backoff = min(worker.backoff * 2, _RESTART_BACKOFF_MAX)
        else:
            worker.backoff = 0.5
        worker.process = _spawn(worker.slot, env)
        worker.started = time.monotonic()
