"""Domain errors of authproxy; HTTP mapping happens in one place (http/errormap.py).

AuthProxyError
├── ConfigError              bad settings; carries every problem found
├── AuthError                a request's credential was refused (401 on the wire)
│   ├── MissingKey           no Authorization header, or not a Bearer credential
│   ├── InvalidKey           malformed, bad checksum, unknown id or wrong secret
│   ├── ExpiredKey           the key's expires_at has passed
│   └── RevokedKey           the key was revoked
├── AdminTokenInvalid        admin JWT unreadable, badly signed, expired... (401)
│   └── AdminTokenMissing    no admin credential sent (401, plain challenge)
├── Forbidden                valid admin JWT, but no managing role in that space (403)
├── StoreUnavailable         PostgreSQL cannot be reached (503)
├── Overloaded               too many argon2 verifications waiting (503)
├── TooManyRequests          a client's failures or a key's rate limit (429)
├── NeedsVerification        a key not verified in the cache, when the caller may not
│                            spend a query and argon2 on it (admission: 429)
├── NotFound                 no such key in that space (404)
├── Conflict                 the key's state forbids the change: roll a revoked key (409)
├── InvalidInput             a field of a request is unacceptable (422)
├── MalformedBody            not JSON, or not a JSON object (400)
├── BodyTooLarge             body over the configured cap (413)
├── UnsupportedMediaType     body is not application/json (415)
│   └── UnsupportedEncoding  body has a Content-Encoding (415)
└── MigrationError           a migration failed or the schema is newer than the code
"""

from __future__ import annotations


class AuthProxyError(Exception):
    """Base of every error authproxy raises on purpose."""


class ConfigError(AuthProxyError):
    """Settings are invalid; ``problems`` lists one line per bad setting."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class AuthError(AuthProxyError):
    """A credential was refused. ``reason`` is a short snake_case word for logs."""

    reason = "auth_failed"


class MissingKey(AuthError):
    reason = "missing"


class InvalidKey(AuthError):
    reason = "invalid"


class ExpiredKey(AuthError):
    reason = "expired"


class RevokedKey(AuthError):
    reason = "revoked"


class AdminTokenInvalid(AuthProxyError):
    """No valid admin token; the message is a reason for logs, never sent to the client."""


class AdminTokenMissing(AdminTokenInvalid):
    """No admin credential was sent at all."""


class Forbidden(AuthProxyError):
    """The caller is authenticated but may not do this in this space."""


class MalformedBody(AuthProxyError):
    """The request body is not valid JSON, or not a JSON object."""


class BodyTooLarge(AuthProxyError):
    """The request body is larger than allowed."""


class UnsupportedMediaType(AuthProxyError):
    """The request body is not declared as application/json."""


class UnsupportedEncoding(UnsupportedMediaType):
    """The request body is compressed; the admin API reads bodies only as sent."""


class StoreUnavailable(AuthProxyError):
    """The key store (PostgreSQL) could not answer."""


class Overloaded(AuthProxyError):
    """Too much verification work is queued; answer fast instead of queueing more."""


class TooManyRequests(AuthProxyError):
    """A limit was hit. ``headers`` carries Retry-After (and RateLimit-* for key limits)."""

    def __init__(self, code: str, message: str, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers


class NeedsVerification(AuthProxyError):
    """Answering needs PostgreSQL and argon2 (the key has no verified cache entry), and
    the caller said it may not spend them: a client address throttled for refused keys."""


class NotFound(AuthProxyError):
    """The requested key does not exist in the requested space."""


class Conflict(AuthProxyError):
    """The key exists, but its state forbids the change; ``code`` says which state."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class InvalidInput(AuthProxyError):
    """A request field broke a rule; ``field`` names it, the message says the rule."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class MigrationError(AuthProxyError):
    """Applying migrations failed."""
