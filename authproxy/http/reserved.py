"""The path prefix this hop keeps for itself: health, metrics and the admin API."""

from __future__ import annotations

from typing import Final

RESERVED_PREFIX: Final = "/_authproxy/"


def is_reserved(raw_path: str) -> bool:
    """Matched on the raw path, so no encoded or dotted spelling reaches the admin API."""
    path = raw_path.split("?", 1)[0]
    return path == RESERVED_PREFIX.rstrip("/") or path.startswith(RESERVED_PREFIX)
