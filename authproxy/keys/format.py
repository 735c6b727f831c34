"""API key format (generate, parse, checksum) and the argon2id hasher for key secrets.

A key looks like ``asc_<lookup id><secret><checksum>``, all base62 after the prefix:

    asc_ 3fK9xQ2aB7 Zr8...(28 chars) 1xYz9Q
         lookup id  secret            CRC32 of everything before it

* the lookup id (10 chars, ~59 bits) is not secret; it finds the row in the database;
* the secret (28 chars, ~166 bits, >= the 160 DESIGN.md asks for) is only ever stored hashed;
* the checksum lets us reject typos and junk without a database query or argon2, and lets
  secret scanners find leaked keys with ``asc_[0-9A-Za-z]{44}`` (the GitHub token scheme).
"""

from __future__ import annotations

import secrets
import zlib
from dataclasses import dataclass, field
from typing import Final

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from authproxy.config.schema import HashingConfig
from authproxy.errors import InvalidKey

KEY_PREFIX: Final = "asc_"
ALPHABET: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
LOOKUP_ID_LEN: Final = 10
SECRET_LEN: Final = 28
CHECKSUM_LEN: Final = 6
KEY_LEN: Final = len(KEY_PREFIX) + LOOKUP_ID_LEN + SECRET_LEN + CHECKSUM_LEN
KEY_REGEX: Final = rf"{KEY_PREFIX}[0-9A-Za-z]{{{KEY_LEN - len(KEY_PREFIX)}}}"
_ALPHABET_SET: Final = frozenset(ALPHABET)


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A key that passed the format and checksum checks; not yet verified."""

    lookup_id: str
    secret: str = field(repr=False)  # out of repr: no traceback may print it

    @property
    def display_prefix(self) -> str:
        """What the key list shows: the prefix plus the lookup id."""
        return KEY_PREFIX + self.lookup_id


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated key; ``full`` is shown to the user exactly once."""

    full: str = field(repr=False)  # out of repr: no traceback may print it
    parsed: ParsedKey


def _random_base62(length: int) -> str:
    # secrets.choice draws with randbelow: uniform, no modulo bias.
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _checksum(body: str) -> str:
    value = zlib.crc32(body.encode("ascii"))
    digits = []
    for _ in range(CHECKSUM_LEN):
        value, digit = divmod(value, len(ALPHABET))
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def generate_key() -> NewKey:
    lookup_id = _random_base62(LOOKUP_ID_LEN)
    secret = _random_base62(SECRET_LEN)
    body = KEY_PREFIX + lookup_id + secret
    return NewKey(full=body + _checksum(body), parsed=ParsedKey(lookup_id, secret))


def parse_key(raw: str) -> ParsedKey:
    """Check format and checksum; costs no I/O.

    Raises:
        InvalidKey: wrong length, prefix, alphabet or checksum.
    """
    if len(raw) != KEY_LEN or not raw.startswith(KEY_PREFIX):
        raise InvalidKey("malformed key")
    rest = raw[len(KEY_PREFIX) :]
    if not _ALPHABET_SET.issuperset(rest):
        raise InvalidKey("malformed key")
    body, checksum = raw[:-CHECKSUM_LEN], raw[-CHECKSUM_LEN:]
    if not secrets.compare_digest(_checksum(body), checksum):
        raise InvalidKey("bad checksum")
    return ParsedKey(lookup_id=rest[:LOOKUP_ID_LEN], secret=rest[LOOKUP_ID_LEN:-CHECKSUM_LEN])


class KeyHasher:
    """argon2id for key secrets. Wraps PasswordHasher so callers see booleans, not exceptions."""

    def __init__(self, hasher: argon2.PasswordHasher) -> None:
        self._hasher = hasher

    @classmethod
    def from_config(cls, cfg: HashingConfig) -> KeyHasher:
        return cls(
            argon2.PasswordHasher(
                time_cost=cfg.time_cost,
                memory_cost=cfg.memory_cost_kib,
                parallelism=cfg.parallelism,
                type=argon2.Type.ID,
            )
        )

    def hash(self, secret: str) -> str:
        return self._hasher.hash(secret)

    def verify(self, stored_hash: str, secret: str) -> bool:
        """True when ``secret`` matches; False for a mismatch or an unreadable hash."""
        try:
            return self._hasher.verify(stored_hash, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def should_rehash(self, stored_hash: str) -> bool:
        return self._hasher.check_needs_rehash(stored_hash)
