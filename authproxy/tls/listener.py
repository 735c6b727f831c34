"""The listener's certificate, replaced while serving (SIGHUP, or its files changed).

The listening socket keeps one SSLContext for its whole life (``context``). Every
handshake switches to the newest context in the SNI callback, which OpenSSL runs for
each ClientHello, with or without a server name, before it picks a certificate. A reload
therefore reaches only handshakes that start after it: open connections keep their
session and bytes flow on. A reload whose files do not load changes nothing but the log.
Kubernetes updates a mounted Secret by swapping a symbolic link, which is why the files
are compared by what ``os.stat`` says of their targets (modification time, size, inode),
not only by their modification time.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Protocol

import structlog

from authproxy.config.schema import ServerConfig
from authproxy.errors import ConfigError
from authproxy.tls.contexts import server_context
from authproxy.tls.files import key_mode_problem

log = structlog.get_logger(__name__)

FileStamp = tuple[int, int, int, int] | None


class ExpiryGauge(Protocol):
    """A gauge child: authproxy_tls_certificate_expiry_seconds{certificate="listener"}."""

    def set(self, value: float) -> None: ...


def _stamp(path: str) -> FileStamp:
    try:
        st = os.stat(os.path.expanduser(path))
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class ListenerCertificate:
    """The current server SSLContext (see the module docstring).

    Raises ConfigError from the constructor when the files cannot be loaded: a listener
    configured for TLS never falls back to plain HTTP.
    """

    def __init__(self, cfg: ServerConfig, *, expiry: ExpiryGauge | None = None) -> None:
        self._cfg = cfg
        self._expiry = expiry
        self._stamps = self._read_stamps()
        self._current, self.facts = server_context(cfg)
        self.context = self._current  # the listening socket's, for its whole life
        self.context.sni_callback = self._select
        self._published()
        key_file = cfg.tls_key_file or ""
        if problem := key_mode_problem(key_file, "server.tls_key_file"):
            # Served anyway (a restart must not fail on it); check-config refuses it.
            log.warning("tls_key_file_readable_by_others", detail=problem)

    def _read_stamps(self) -> tuple[FileStamp, ...]:
        return tuple(_stamp(p) for p in (self._cfg.tls_cert_file, self._cfg.tls_key_file) if p)

    def _select(
        self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        current = self._current
        if current is not context:
            ssl_object.context = current

    def _published(self) -> None:
        if self._expiry is not None:
            self._expiry.set(self.facts.not_after.timestamp())

    def reload(self, reason: str) -> bool:
        """Load the files again for new handshakes; on failure keep the current ones."""
        self._stamps = self._read_stamps()
        try:
            context, facts = server_context(self._cfg)
        except ConfigError as exc:
            log.error(
                "tls_reload_failed",
                reason=reason,
                problems=exc.problems,
                kept_subject=self.facts.subject,
                kept_not_after=self.facts.not_after.isoformat(),
            )
            return False
        self._current, self.facts = context, facts
        self._published()
        log.info(
            "tls_reloaded",
            reason=reason,
            subject=facts.subject,
            not_after=facts.not_after.isoformat(),
            days_left=facts.days_left(),
        )
        return True

    def files_changed(self) -> bool:
        return self._read_stamps() != self._stamps

    async def watch(self, interval: float) -> None:
        """Reload when either file changed, looking every ``interval`` seconds (0: never).
        A file that changed into something broken is tried once, not on every look."""
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            if self.files_changed():
                self.reload("files_changed")
