"""Scratch PostgreSQL databases: created on a server, migrated, dropped WITH (FORCE) when
the lab closes; and the authproxy CLI run against one."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.lab.aio import run_async
from bench.lab.processes import BenchError, Lab

SERVER_ENV = "AUTHPROXY_TEST_DATABASE_URL"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_from_env() -> str | None:
    return os.environ.get(SERVER_ENV) or None


def embedded_server() -> str:
    """An embedded PostgreSQL (authproxy[embedded]) in a new temp dir; its URL."""
    from authproxy.db.embedded import start_embedded_postgres

    return start_embedded_postgres(tempfile.mkdtemp(prefix="bench-pg-") + "/data")


async def create_database(server: str, prefix: str) -> str:
    name = prefix + secrets.token_hex(4)
    conn = await asyncpg.connect(server, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(server)._replace(path="/" + name))


async def drop_database(server: str, db_url: str) -> None:
    conn = await asyncpg.connect(server, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(db_url).path[1:]}" WITH (FORCE)')
    finally:
        await conn.close()


def scratch_database(lab: Lab, server: str, prefix: str) -> str:
    """A new database on server, migrated, dropped by lab.close(); its URL."""
    db_url = run_async(create_database(server, prefix))
    lab.on_close("dropping the scratch database", lambda: run_async(drop_database(server, db_url)))
    authproxy_cli(db_url, "migrate")
    return db_url


def authproxy_cli(db_url: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "authproxy", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "AUTHPROXY_DATABASE_URL": db_url},
        timeout=120,
    )
    if done.returncode != 0:
        raise BenchError(
            f"authproxy {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-500:]}"
        )
    return done.stdout


def run_in_lab(prefix: str, keep_tmp: bool, measure: Callable[[Lab, str], None]) -> int:
    """measure(lab, db_url) in a new lab with a scratch database (the environment's
    server, else an embedded one); 1 after printing a BenchError, else 0. The lab is
    closed (processes stopped, database dropped) either way."""
    server = server_from_env() or embedded_server()
    lab = Lab.create(prefix)
    try:
        measure(lab, scratch_database(lab, server, "authproxy_bench_"))
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        lab.close(keep_tmp)
    return 0
