"""PgBouncer in transaction pooling mode in front of a PostgreSQL server, for tests and
benchmarks: Debian's package, started as our own process with our own ini in a temp dir
(never the system service), stopped by ``close()``.

    bouncer = PgBouncer.start(direct_url, workdir)
    try:
        bouncer.pooled(direct_url)  # the same database and user, through PgBouncer
    finally:
        bouncer.close()
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench.lab.install import apt_get_install
from bench.lab.processes import BenchError, free_port

BINARY = "/usr/sbin/pgbouncer"
START_TIMEOUT = 10.0
# PgBouncer refuses to run as root; as root it is told to become one of these.
UNPRIVILEGED_USERS = ("postgres", "embedded_postgres", "nobody")


def pgbouncer_binary() -> str:
    """The pgbouncer program; apt-get installs Debian's package first when it is missing."""
    found = shutil.which("pgbouncer") or (BINARY if Path(BINARY).exists() else None)
    if found:
        return found
    if os.geteuid() != 0:
        raise BenchError("pgbouncer is missing: apt-get install pgbouncer (or run as root)")
    apt_get_install(["pgbouncer"])
    return shutil.which("pgbouncer") or BINARY


def _unprivileged_user(server_host: str) -> str:
    """Who pgbouncer runs as when we are root: the owner of the server's socket directory
    (an embedded server's is private to its own user), else the first user that exists."""
    if server_host.startswith("/"):
        owner = Path(server_host).stat().st_uid
        if owner != 0:
            return pwd.getpwuid(owner).pw_name
    for name in UNPRIVILEGED_USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise BenchError(f"none of the users {UNPRIVILEGED_USERS} exists to run pgbouncer as")


def _server_host_port(direct_url: str) -> tuple[str, int]:
    """Where the server listens: a TCP host, or a unix socket directory; and the port."""
    parts = urlsplit(direct_url)
    host = parts.hostname or ""
    port = parts.port or 5432
    if not host:  # postgresql:///db?host=/run/socket-dir
        query = dict(item.partition("=")[::2] for item in parts.query.split("&") if item)
        host = query.get("host", "/var/run/postgresql")
        port = int(query.get("port", port))
    return host, port


class PgBouncer:
    """One pgbouncer process, pool_mode = transaction, listening on 127.0.0.1:port."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    @classmethod
    def start(cls, direct_url: str, workdir: Path, *, pool_size: int = 20) -> PgBouncer:
        """Start pgbouncer for ``direct_url``'s server in ``workdir``; wait until it accepts."""
        binary = pgbouncer_binary()
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        host, server_port = _server_host_port(direct_url)
        user = urlsplit(direct_url).username or "postgres"
        run_as = f"user = {_unprivileged_user(host)}" if os.geteuid() == 0 else ""
        ini = workdir / "pgbouncer.ini"
        # auth_type any: the user name is ignored and the [databases] entry's is used
        # (the test servers trust local connections). No unix socket, no pid file, logs
        # to stderr: nothing is written where the unprivileged user could not.
        ini.write_text(
            f"""\
[databases]
* = host={host} port={server_port} user={user}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
server_reset_query =
server_check_delay = 1
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
{run_as}
""",
            encoding="utf-8",
        )
        log = workdir / "pgbouncer.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [binary, str(ini)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        bouncer = cls(process, port, log)
        bouncer._wait_accepting()
        return bouncer

    def _wait_accepting(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"pgbouncer exited: {self.log.read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise BenchError(f"pgbouncer did not listen within {START_TIMEOUT} s")

    def pooled(self, direct_url: str) -> str:
        """``direct_url``'s database and user, reached through this pgbouncer."""
        parts = urlsplit(direct_url)
        user = parts.username or "postgres"
        return urlunsplit(("postgresql", f"{user}@127.0.0.1:{self.port}", parts.path, "", ""))

    def close(self) -> None:
        """SIGTERM (immediate shutdown), then SIGKILL if it lingers; never raises."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
