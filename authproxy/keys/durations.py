"""Durations as people type them: whole seconds, or a number with s, m, h or d (``90d``).

One parser for the admin API (``?unused_for=``) and the CLI (``--grace``, ``--unused-for``),
so both accept and refuse exactly the same spellings.
"""

from __future__ import annotations

import re
from typing import Final

from authproxy.errors import InvalidInput

UNIT_SECONDS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# 100 years: far past any key's life, and far from timedelta's and PostgreSQL's limits.
MAX_DURATION: Final = 36500 * 86400
# At most 12 digits: int() of a long digit string is slow (and refused past 4300 digits).
_DURATION: Final = re.compile(r"([0-9]{1,12})([smhd]?)")


def duration_rule(low: int, high: int) -> str:
    return (
        "must be whole seconds or a number with s, m, h or d (e.g. 90d), "
        f"from {spoken(low)} to {spoken(high)}"
    )


def spoken(seconds: int) -> str:
    """The largest unit that says ``seconds`` exactly: 2592000 -> '30d', 90 -> '90s'."""
    for unit in ("d", "h", "m"):
        if seconds and seconds % UNIT_SECONDS[unit] == 0:
            return f"{seconds // UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


def parse_duration(text: str, field: str, *, low: int = 0, high: int = MAX_DURATION) -> int:
    """Seconds from ``90``, ``90s``, ``30m``, ``12h`` or ``90d``, within [low, high].

    Raises:
        InvalidInput: naming ``field``, for any other spelling or a value out of range.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise InvalidInput(field, duration_rule(low, high))
    seconds = int(match[1]) * UNIT_SECONDS[match[2]]
    if not low <= seconds <= high:
        raise InvalidInput(field, duration_rule(low, high))
    return seconds
