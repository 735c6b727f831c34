"""Decide who a Bearer credential belongs to: parse, cache, database, argon2."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from authproxy.cache import VerifiedKeyCache
from authproxy.errors import (
    AuthError,
    ExpiredKey,
    InvalidKey,
    MissingKey,
    RevokedKey,
    StoreUnavailable,
)
from authproxy.keys import KeyHasher, ParsedKey, parse_key
from authproxy.store import KeyRecord, Store
from authproxy.usage import UsageRecorder

log = structlog.get_logger(__name__)

WallClock = Callable[[], datetime]
# Longest Authorization value we even look at; a valid one is "Bearer " + 48 chars.
_MAX_CREDENTIAL_LEN = 256


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity a valid key stands for; what the upstream is told."""

    key_id: str
    space_id: str
    prefix: str
    expires_at: datetime | None


CacheValue = Principal | type[AuthError]


def bearer_token(authorizations: Sequence[str], max_len: int = _MAX_CREDENTIAL_LEN) -> str:
    """Extract the token of the ``Authorization: Bearer <token>`` header (RFC 6750 §2.1).

    The scheme is case-insensitive (RFC 9110 §11.1). Anything else is refused.

    Raises:
        MissingKey: no credential was sent.
        InvalidKey: a credential was sent, but not exactly one well-formed Bearer one.
    """
    if len(authorizations) > 1:
        # Two credentials are never "first wins" or "last wins": refuse outright.
        raise InvalidKey("duplicate authorization headers")
    authorization = authorizations[0] if authorizations else ""
    if authorization.strip(" \t") == "":
        raise MissingKey("no credential")
    if len(authorization) > max_len:
        raise InvalidKey("credential too long")
    scheme, _, token = authorization.partition(" ")
    token = token.lstrip(" ")
    if scheme.lower() != "bearer" or not token or " " in token or "\t" in token:
        raise InvalidKey("malformed authorization header")
    return token


class Authenticator:
    """Turns a presented key into a Principal, spending argon2 only on cache misses."""

    def __init__(self, *, store: Store, cache: VerifiedKeyCache[CacheValue], hasher: KeyHasher,
                 executor: Executor, usage: UsageRecorder, cache_ttl: float,
                 negative_ttl: float, wall_clock: WallClock = lambda: datetime.now(UTC)) -> None:
        self._store = store
        self._cache = cache
        self._hasher = hasher
        self._executor = executor
        self._usage = usage
        self._cache_ttl = cache_ttl
        self._negative_ttl = negative_ttl
        self._now = wall_clock
        # A per-process key for the cache digest: the cache never holds the key itself, and
        # a memory dump's digests cannot be checked against guesses offline.
        self._digest_key = secrets.token_bytes(32)
        # Verified against when a lookup id is unknown, so that answer costs the same argon2
        # work as a wrong secret and response timing does not tell which ids exist.
        self._dummy_hash = hasher.hash(secrets.token_urlsafe(16))

    async def authenticate(self, authorizations: Sequence[str]) -> Principal:
        """Return the Principal of a valid key and record its use.

        Raises:
            MissingKey, InvalidKey, ExpiredKey, RevokedKey: the credential is refused.
            StoreUnavailable: the key was not cached and PostgreSQL could not answer.
        """
        raw = bearer_token(authorizations)
        parsed = parse_key(raw)
        digest = hashlib.blake2b(raw.encode("ascii"), key=self._digest_key).digest()
        now = self._now()
        entry = self._cache.get(digest)
        if entry is not None:
            if not isinstance(entry.value, Principal):
                raise entry.value("refused (cached)")
            principal = entry.value
        else:
            principal = await self._verify(parsed, digest, now)
        if principal.expires_at is not None and principal.expires_at <= now:
            raise ExpiredKey("expired")
        self._usage.record(principal.key_id, now)
        return principal

    async def _verify(self, parsed: ParsedKey, digest: bytes, now: datetime) -> Principal:
        generation = self._cache.generation()
        record = await self._store.find_by_lookup_id(parsed.lookup_id)
        try:
            principal = await self._check(record, parsed, now)
        except AuthError as exc:
            self._cache.put(digest, type(exc), key_id=None, ttl=self._negative_ttl,
                            generation=generation)
            raise
        ttl = self._cache_ttl
        if principal.expires_at is not None:
            ttl = min(ttl, (principal.expires_at - now).total_seconds())
        self._cache.put(digest, principal, key_id=principal.key_id, ttl=ttl, generation=generation)
        return principal

    async def _check(self, record: KeyRecord | None, parsed: ParsedKey, now: datetime) -> Principal:
        if record is None:
            await self._run_hasher(self._hasher.verify, self._dummy_hash, parsed.secret)
            raise InvalidKey("unknown key id")
        if not await self._run_hasher(self._hasher.verify, record.secret_hash, parsed.secret):
            raise InvalidKey("wrong secret")
        status = record.status(now)
        if status == "revoked":
            raise RevokedKey("revoked")
        if status == "expired":
            raise ExpiredKey("expired")
        if self._hasher.should_rehash(record.secret_hash):
            asyncio.create_task(self._rehash(record, parsed.secret))  # noqa: RUF006
        return Principal(record.id, record.space_id, record.prefix, record.expires_at)

    async def _run_hasher(self, fn: Callable[[str, str], bool], stored: str, secret: str) -> bool:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, stored, secret)

    async def _rehash(self, record: KeyRecord, secret: str) -> None:
        new_hash = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._hasher.hash, secret)
        try:
            await self._store.replace_hash(record.id, record.secret_hash, new_hash)
        except StoreUnavailable as exc:
            log.warning("key_rehash_failed", key_id=record.id, error=str(exc))
        else:
            log.info("key_rehashed", key_id=record.id)

