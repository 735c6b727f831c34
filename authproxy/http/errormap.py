"""The one place domain errors become HTTP answers: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from aiohttp import web

from authproxy.errors import (
    AdminTokenInvalid,
    AdminTokenMissing,
    AuthError,
    BodyTooLarge,
    Conflict,
    Forbidden,
    InvalidInput,
    MalformedBody,
    MissingKey,
    NotFound,
    Overloaded,
    StoreUnavailable,
    TooManyRequests,
    UnsupportedEncoding,
    UnsupportedMediaType,
)
from authproxy.upstream.transport import UpstreamTimeout, UpstreamUnavailable

REALM: Final = 'Bearer realm="authproxy"'
ADMIN_REALM: Final = 'Bearer realm="authproxy-admin"'
INVALID_TOKEN: Final = ', error="invalid_token"'
# One public answer for every refused key; the precise reason goes to the log only.
INVALID_TOKEN_MESSAGE: Final = "The API key is invalid, expired or revoked."
MISSING_TOKEN_MESSAGE: Final = "Send an API key as 'Authorization: Bearer <key>'."

# exception type -> (status, code, public message); the most specific type first.
_TABLE: Final[list[tuple[type[Exception], int, str, str]]] = [
    (MissingKey, 401, "missing_token", MISSING_TOKEN_MESSAGE),
    (AuthError, 401, "invalid_token", INVALID_TOKEN_MESSAGE),
    (
        AdminTokenMissing,
        401,
        "missing_token",
        "Send an admin token as 'Authorization: Bearer <JWT>'.",
    ),
    (
        AdminTokenInvalid,
        401,
        "invalid_token",
        "The admin token is invalid or expired; API keys are not admin tokens.",
    ),
    (Forbidden, 403, "forbidden", "Only owners and admins of this space may manage its keys."),
    (MalformedBody, 400, "malformed_json", "The body must be a JSON object."),
    (BodyTooLarge, 413, "body_too_large", "The request body is too large."),
    (
        UnsupportedEncoding,
        415,
        "unsupported_content_encoding",
        "Send the body uncompressed, without a Content-Encoding.",
    ),
    (
        UnsupportedMediaType,
        415,
        "unsupported_media_type",
        "Send the body as 'Content-Type: application/json'.",
    ),
    (
        StoreUnavailable,
        503,
        "key_store_unavailable",
        "The key store is unavailable; try again shortly.",
    ),
    (NotFound, 404, "not_found", "No such key in this space."),
    (Overloaded, 503, "overloaded", "Too many key verifications at once; retry shortly."),
    (UpstreamTimeout, 504, "upstream_timeout", "The upstream service did not answer in time."),
    (
        UpstreamUnavailable,
        502,
        "upstream_unavailable",
        "The upstream service could not be reached.",
    ),
]


def json_error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def error_response(exc: Exception) -> web.Response | None:
    """The HTTP answer for a domain error, or None when ``exc`` is not one we map."""
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        # aiohttp's HTTP exceptions raised inside a handler, as our JSON errors.
        text = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else None
        return json_error(exc.status, exc.reason.lower().replace(" ", "_"), text or exc.reason)
    if isinstance(exc, InvalidInput):
        return json_error(422, "invalid_" + exc.field, exc.message)
    if isinstance(exc, TooManyRequests):
        return json_error(429, exc.code, exc.message, exc.headers)
    if isinstance(exc, Conflict):
        return json_error(409, exc.code, exc.message)
    for kind, status, code, message in _TABLE:
        if isinstance(exc, kind):
            headers = {"WWW-Authenticate": _challenge(exc)} if status == 401 else None
            if isinstance(exc, Overloaded):
                headers = {"Retry-After": "1"}
            elif isinstance(exc, UnsupportedEncoding):
                headers = {"Accept-Encoding": "identity"}  # RFC 9110 §15.5.16
            return json_error(status, code, message, headers)
    return None


def _challenge(exc: Exception) -> str:
    """RFC 6750 §3: no error code when no credential was sent at all."""
    realm = ADMIN_REALM if isinstance(exc, AdminTokenInvalid) else REALM
    missing = isinstance(exc, MissingKey | AdminTokenMissing)
    return realm if missing else realm + INVALID_TOKEN
