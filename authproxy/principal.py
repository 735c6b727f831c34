"""Who a key stands for, and the compact form in which the verified-key cache keeps it.

Issue 6 asked for 100,000 cached keys in 100 MB. As Python objects, a cached key was a
Principal, a Verified, their strings and a fingerprint; packed into one bytes object the
cache costs 557 bytes per key instead of 717. Unpacking on every cache hit cost 1.5 µs
per request (7% of the fast path), so the last RECENT keys unpacked keep their Principal;
with more keys than that in rotation, hits pay the unpacking again.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple


class Principal(NamedTuple):
    """The identity a valid key stands for; what the upstream is told.

    Immutable; a NamedTuple because a cache hit builds one (a frozen dataclass cost twice
    as much to make).
    """

    key_id: str
    space_id: str
    prefix: str
    expires_at: datetime | None
    rate_limit: float | None = None  # requests/s for this key; None: the default


class Verified(NamedTuple):
    """A key that passed: who, and which stored hash it was verified against (a 16-byte
    keyed fingerprint of it, so a re-check can tell whether the hash changed)."""

    principal: Principal
    hash_fingerprint: bytes


# hash fingerprint, expires_at (µs since the epoch, exact to year 9999; _NEVER: no
# expiry), rate limit (NaN: the default), space number; then the prefix, UTF-8. The key
# id is the cache entry's own.
_PACKED: Final = struct.Struct("<16sqdI")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_NEVER: Final = -(2**63)
_NONE: Final = math.nan
# Principals kept for keys unpacked lately: the keys in use now, not the whole cache.
RECENT: Final = 4096


class PrincipalPacker:
    """Packs Verified into bytes and back. Space ids are numbered, not stored per key: a
    space has many keys. The numbering only grows (spaces are few, made by admins)."""

    def __init__(self) -> None:
        self._spaces: list[str] = []
        self._numbers: dict[str, int] = {}
        self._recent: dict[bytes, Principal] = {}

    def pack(self, verified: Verified) -> bytes:
        principal = verified.principal
        number = self._numbers.get(principal.space_id)
        if number is None:
            number = self._numbers[principal.space_id] = len(self._spaces)
            self._spaces.append(principal.space_id)
        expires = (_NEVER if principal.expires_at is None
                   else (principal.expires_at - _EPOCH) // _MICROSECOND)
        rate = _NONE if principal.rate_limit is None else principal.rate_limit
        return (_PACKED.pack(verified.hash_fingerprint, expires, rate, number)
                + principal.prefix.encode("utf-8", "surrogateescape"))

    def principal(self, key_id: str, packed: bytes) -> Principal:
        """unpack(...).principal, from the recent ones when it was unpacked lately."""
        principal = self._recent.get(packed)
        # A packed entry includes a fingerprint of the key's own salted hash, so two keys
        # never pack alike; the key id check makes sure of it anyway.
        if principal is None or principal.key_id != key_id:
            if len(self._recent) >= RECENT:
                self._recent.clear()
            principal = self._recent[packed] = self.unpack(key_id, packed).principal
        return principal

    def unpack(self, key_id: str, packed: bytes) -> Verified:
        fingerprint, expires, rate, number = _PACKED.unpack_from(packed)
        principal = Principal(
            key_id, self._spaces[number],
            packed[_PACKED.size:].decode("utf-8", "surrogateescape"),
            None if expires == _NEVER else _EPOCH + timedelta(microseconds=expires),
            None if math.isnan(rate) else rate)
        return Verified(principal, fingerprint)
