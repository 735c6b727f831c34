"""structlog setup and the request context: request id, access line, last-resort 500."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from authproxy.config.schema import LoggingConfig
from authproxy.http.errormap import error_response, json_error
from authproxy.http.headers import X_REQUEST_ID, request_id_from

log = structlog.get_logger(__name__)

REQUEST_ID: Final = web.RequestKey("request_id", str)
CLIENT_CLOSED_REQUEST: Final = 499
INTERNAL_ERROR_MESSAGE: Final = "Internal error; the request id identifies it in the logs."

# Belt and braces: whatever a log call is handed, these never reach the output.
_KEY_PATTERN: Final = re.compile(r"asc_[0-9A-Za-z]{8,}")
_BEARER_PATTERN: Final = re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',]+")
_JWT_PATTERN: Final = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")
_HASH_PATTERN: Final = re.compile(r"\$argon2(id|i|d)\$[^\s\"']+")
_SENSITIVE_FIELDS: Final = frozenset({"authorization", "key", "token", "secret_hash", "jwt"})


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask API keys, JWTs, argon2 hashes, Bearer/Basic values, and
    fields named like secrets, in every string value of every event."""
    for name, value in event.items():
        if name in _SENSITIVE_FIELDS:
            event[name] = "<redacted>"
        elif isinstance(value, str):
            value = _KEY_PATTERN.sub("asc_<redacted>", value)
            value = _JWT_PATTERN.sub("<jwt redacted>", value)
            value = _HASH_PATTERN.sub("<hash redacted>", value)
            event[name] = _BEARER_PATTERN.sub(r"\1 <redacted>", value)
    return event


def configure_logging(cfg: LoggingConfig, *, cache: bool = True) -> None:
    """JSON lines for machines, the console renderer when a person watches a TTY."""
    console = cfg.format == "console" or (cfg.format == "auto" and sys.stderr.isatty())
    renderer: Any = (structlog.dev.ConsoleRenderer() if console
                     else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[cfg.level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache,
    )


async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the request id, answer unexpected errors with JSON 500, write the access line."""
    started = time.perf_counter()
    request_id = request_id_from(request.headers.get(X_REQUEST_ID))
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    # The path only: a query string may carry anything, keys included.
    structlog.contextvars.bind_contextvars(
        request_id=request_id, method=request.method, path=request.raw_path.split("?")[0])
    try:
        response = await _answer(request, handler)
    finally:
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
    if not response.prepared and request.body_exists and not request.content.is_eof():
        # Refused before its body was read (401, 413...): close rather than let aiohttp
        # read and discard an unauthenticated upload to keep the connection alive.
        response.force_close()
    log.info("request", status=response.status, duration_ms=duration_ms,
             remote=request.remote)
    return response


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: every answer, streamed or not, names its request id."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[X_REQUEST_ID] = request_id


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_error(exc.status, exc.reason.lower().replace(" ", "_"),
                          exc.text if exc.text and not exc.text.startswith(str(exc.status))
                          else exc.reason)
    except ConnectionError:
        # The client went away mid-answer (a closed browser tab, a load test ending): not
        # our error. 499 is nginx's "client closed request"; it is logged, never sent.
        log.info("client_disconnected")
        return web.Response(status=CLIENT_CLOSED_REQUEST)
    except Exception as exc:  # the one catch-all: the daemon answers, logs and keeps serving
        mapped = error_response(exc)
        if mapped is not None:
            return mapped
        log.error("unhandled_error", exc_info=True)
        return json_error(500, "internal_error", INTERNAL_ERROR_MESSAGE)
