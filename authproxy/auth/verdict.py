"""Who a key stands for, and the compact form in which the verified-key cache keeps it.

Issue 6 asked for 100,000 cached keys in 100 MB. As Python objects, a cached key was a
Principal, a Verified, their strings and a fingerprint (717 bytes per key with the cache's
own objects); the cache now keeps each entry as one bytes record, and this module encodes
the verdict in it: a Verified in about 50 bytes, a refusal in one.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

from authproxy.errors import AuthError, ExpiredKey, InvalidKey, MissingKey, RevokedKey


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
# A cached refusal is one byte: its index here.
_REFUSALS: Final[tuple[type[AuthError], ...]] = (MissingKey, InvalidKey, ExpiredKey, RevokedKey)

# What the cache holds for a key: it passed (who, against which hash), or the class of
# the refusal, so the log keeps the precise reason.
Verdict = Verified | type[AuthError]


class VerdictCodec:
    """Encodes verdicts for the cache and decodes them (authproxy.cache.Codec).

    Space ids are numbered, not stored per key: a space has many keys. The numbering only
    grows (spaces are few, made by admins). The key id is the cache entry's own.
    """

    def __init__(self) -> None:
        self._spaces: list[str] = []
        self._numbers: dict[str, int] = {}

    @property
    def space_count(self) -> int:
        """Distinct space ids numbered so far: grows with spaces, not with keys.

        Read-only, for watching the codec's memory (tests, a stats page).
        """
        return len(self._spaces)

    def encode(self, value: Verdict) -> bytes:
        if not isinstance(value, Verified):
            return bytes((_REFUSALS.index(value),))
        principal = value.principal
        number = self._numbers.get(principal.space_id)
        if number is None:
            number = self._numbers[principal.space_id] = len(self._spaces)
            self._spaces.append(principal.space_id)
        expires = (
            _NEVER
            if principal.expires_at is None
            else (principal.expires_at - _EPOCH) // _MICROSECOND
        )
        rate = _NONE if principal.rate_limit is None else principal.rate_limit
        return _PACKED.pack(
            value.hash_fingerprint, expires, rate, number
        ) + principal.prefix.encode("utf-8", "surrogateescape")

    def decode(self, key_id: str | None, data: bytes) -> Verdict:
        if len(data) == 1:
            return _REFUSALS[data[0]]
        if key_id is None:
            raise ValueError("a cached key without a key id")
        fingerprint, expires, rate, number = _PACKED.unpack_from(data)
        principal = Principal(
            key_id,
            self._spaces[number],
            data[_PACKED.size :].decode("utf-8", "surrogateescape"),
            None if expires == _NEVER else _EPOCH + timedelta(microseconds=expires),
            None if math.isnan(rate) else rate,
        )
        return Verified(principal, fingerprint)
