"""The path prefix this hop keeps for itself: health, metrics, the admin API and
forward-auth's verify endpoint."""

from __future__ import annotations

from typing import Final

RESERVED_PREFIX: Final = "/_authproxy/"


def is_reserved(raw_path: str) -> bool:
    """Matched on the raw path, so no encoded or dotted spelling reaches the admin API."""
    path = raw_path.split("?", 1)[0]
    return path == RESERVED_PREFIX.rstrip("/") or path.startswith(RESERVED_PREFIX)


# Forward-auth (http/lifecycle.py, RequestLifecycle.verify): this path and any below it
# (Envoy's ext_authz appends the original path to a prefix), any method.
VERIFY_PATH: Final = RESERVED_PREFIX + "v1/verify"


def is_verify(raw_path: str) -> bool:
    path = raw_path.split("?", 1)[0]
    return path == VERIFY_PATH or path.startswith(VERIFY_PATH + "/")
