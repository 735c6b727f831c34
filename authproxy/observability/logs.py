"""structlog setup: JSON lines (or a console view), and no secret in any of them.

The request context (request id, access line) is http/lifecycle.py's: it sets
``current_request`` once per request, and every line logged meanwhile gets the request's
id, method, path and, once a key is accepted, space and key id (``merge_request``).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any, Final, Protocol

import structlog

from authproxy.config.schema import LoggingConfig

log = structlog.get_logger(__name__)


# Belt and braces: whatever a log call is handed, these never reach the output.
_KEY_PATTERN: Final = re.compile(r"asc_[0-9A-Za-z]{8,}")
_BEARER_PATTERN: Final = re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',]+")
_JWT_PATTERN: Final = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")
_HASH_PATTERN: Final = re.compile(r"\$argon2(id|i|d)\$[^\s\"']+")
_SENSITIVE_FIELDS: Final = frozenset({"authorization", "key", "token", "secret_hash", "jwt"})
# What each pattern above must start with: a string holding none of these cannot match
# any of them, and one search is cheaper than four substitutions. Most strings logged
# (paths, ids, event names) hold none; the profile of issue 15 had the four substitutions
# at 15% of a request's time with the access log on.
_MIGHT_HOLD_A_SECRET: Final = re.compile(r"asc_|eyJ|\$argon2|(?i:bearer|basic)")


class Caller(Protocol):
    @property
    def space_id(self) -> str: ...
    @property
    def key_id(self) -> str: ...


class LoggedRequest(Protocol):
    """What a log line says of the request being served (http/exchange.py's Exchange)."""

    @property
    def request_id(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def principal(self) -> Caller | None: ...


# The request being served. One ContextVar set per request, read only when a line is
# logged, rather than structlog's bind_contextvars, which sets one per field: five per
# proxied request, 1.8 µs of its time (issue 15).
current_request: ContextVar[LoggedRequest | None] = ContextVar("current_request", default=None)


def merge_request(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the request being served, as bind_contextvars would have
    added it (fields a call names itself win)."""
    request = current_request.get()
    if request is not None:
        event.setdefault("request_id", request.request_id)
        event.setdefault("method", request.method)
        # The path only: a query string may carry anything, keys included.
        event.setdefault("path", request.target.split("?", 1)[0])
        who = request.principal
        if who is not None:
            event.setdefault("space_id", who.space_id)
            event.setdefault("key_id", who.key_id)
    return event


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask API keys, JWTs, argon2 hashes, Bearer/Basic values, and
    fields named like secrets, in every string value of every event."""
    for name, value in event.items():
        if name in _SENSITIVE_FIELDS:
            event[name] = "<redacted>"
        elif isinstance(value, str):
            event[name] = redact_text(value)
    return event


def redact_text(value: str) -> str:
    """``value`` with every API key, JWT, argon2 hash and Bearer/Basic value masked."""
    if not _MIGHT_HOLD_A_SECRET.search(value):
        return value
    value = _KEY_PATTERN.sub("asc_<redacted>", value)
    value = _JWT_PATTERN.sub("<jwt redacted>", value)
    value = _HASH_PATTERN.sub("<hash redacted>", value)
    return _BEARER_PATTERN.sub(r"\1 <redacted>", value)


def uses_console(cfg: LoggingConfig) -> bool:
    """Whether lines are rendered for a person (a TTY), not as JSON for machines."""
    return cfg.format == "console" or (cfg.format == "auto" and sys.stderr.isatty())


def logs_access(cfg: LoggingConfig) -> bool:
    """Whether each request gets an access line: on, unless turned off or the level
    (warning and above) leaves out info lines, as it always has."""
    return cfg.access and cfg.level in ("debug", "info")


def configure_logging(cfg: LoggingConfig, *, cache: bool = True) -> None:
    """JSON lines for machines, the console renderer when a person watches a TTY."""
    console = uses_console(cfg)
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            merge_request,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[cfg.level.upper()]
        ),
        # One write per line (message and newline together): print() writes them apart,
        # and with --workers N two processes' lines interleaved on the shared stderr
        # ('{...}{...}\n\n', found by CI). A write of at most PIPE_BUF is atomic on a pipe.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache,
    )
