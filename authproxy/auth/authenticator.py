"""Decide who a Bearer credential belongs to: parse, cache, database, argon2."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Executor
from datetime import UTC, datetime
from typing import Any

import structlog

from authproxy.auth.cache import Entry, VerifiedKeyCache
from authproxy.auth.usage import UsageRecorder
from authproxy.auth.verdict import Principal, Verdict, Verified
from authproxy.config.schema import CacheConfig
from authproxy.errors import (
    AuthError,
    ExpiredKey,
    InvalidKey,
    MissingKey,
    NeedsVerification,
    Overloaded,
    RevokedKey,
    StoreUnavailable,
)
from authproxy.keys.format import KEY_LEN, KeyHasher, ParsedKey, parse_key
from authproxy.keys.store import KeyRecord, Store
from authproxy.observability.metrics import Metrics

log = structlog.get_logger(__name__)

WallClock = Callable[[], datetime]
# Longest Authorization value we even look at; a valid one is "Bearer " + 48 chars.
_MAX_CREDENTIAL_LEN = 256
# Cache digests: 120 bits, keyed per process (no offline guessing). Not 128: CPython keeps
# 15 bytes in a 48-byte object and 16 in a 64-byte one, and the cache holds one per key.
_DIGEST_SIZE = 15
# Fingerprints of stored hashes: 128 bits, keyed the same way; they live inside a record.
_FINGERPRINT_SIZE = 16


def _verified(entry: Entry[Verdict]) -> Verified:
    """The Verified of a positive entry."""
    if not isinstance(entry.value, Verified):
        raise TypeError("not a positive cache entry")
    return entry.value


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
    """Turns a presented key into a Principal, spending argon2 only on cache misses.

    A fresh cache entry answers alone. A stale one (past cache.ttl, within
    cache.outage_grace) is re-checked with one query and no argon2 when the stored hash
    is unchanged; if PostgreSQL cannot answer, the stale entry still admits the key.
    """

    def __init__(
        self,
        *,
        store: Store,
        cache: VerifiedKeyCache[Verdict],
        hasher: KeyHasher,
        executor: Executor,
        usage: UsageRecorder,
        settings: CacheConfig,
        metrics: Metrics,
        max_pending: int = 64,
        wall_clock: WallClock = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._cache = cache
        self._hasher = hasher
        self._executor = executor
        self._usage = usage
        self._settings = settings
        self._metrics = metrics
        self._now = wall_clock
        self._max_pending = max_pending
        self._pending = 0  # argon2 verifications running or queued
        self._verifying: dict[bytes, asyncio.Future[None]] = {}  # digest -> done
        # A per-process key for the cache digest: the cache never holds the key itself, and
        # a memory dump's digests cannot be checked against guesses offline.
        self._digest_key = secrets.token_bytes(32)
        # Verified against when a lookup id is unknown, so that answer costs the same argon2
        # work as a wrong secret and response timing does not tell which ids exist.
        self._dummy_hash = hasher.hash(secrets.token_urlsafe(16))

    def authenticate(
        self, authorizations: Sequence[str], *, may_verify: bool = True
    ) -> Principal | Coroutine[Any, Any, Principal]:
        """The Principal of a valid key, its use recorded; or a coroutine that returns it.

        A fresh cache entry answers at once, with no coroutine made: that is every request
        with a known key, and issue 6 measured the coroutine layers on this path. Anything
        needing PostgreSQL or argon2 comes back as a coroutine to await.

        ``may_verify=False`` (a client throttled for refused keys): a key the cache does not
        hold as verified is refused with NeedsVerification instead of costing a query and
        argon2. A verified key (fresh, or stale and re-checked with one query), a refusal
        the cache remembers and a malformed key are answered as always.

        Raises (at once, or from the coroutine):
            MissingKey, InvalidKey, ExpiredKey, RevokedKey: the credential is refused.
            NeedsVerification: at once, only with ``may_verify=False``.
            StoreUnavailable: PostgreSQL could not answer and no usable cache entry exists.
            Overloaded: too many argon2 verifications are already waiting.
        """
        raw = bearer_token(authorizations)
        if len(raw) != KEY_LEN:
            parse_key(raw)  # raises: the precise reason, and no cache lookup to count
        # Only keys that parsed are ever cached, so a hit needs no format or checksum check.
        digest = self._digest(raw)
        now = self._now()
        entry = self._cache.get(digest)
        if entry is not None and self._answers_alone(entry):
            return self._from_cache(entry, now)
        parsed = parse_key(raw)  # a bad checksum costs no I/O, whoever sends it
        if entry is None and not may_verify:
            raise NeedsVerification("no verified cache entry")
        return self._authenticate_with_io(parsed, digest, now, entry)

    def cached(self, authorizations: Sequence[str]) -> Principal | None:
        """The Principal of a key the cache holds as verified, fresh and unexpired,
        counted and recorded as authenticate() would; else None, with nothing counted or
        recorded (authenticate() then judges the credential, refusals included)."""
        try:
            raw = bearer_token(authorizations)
        except AuthError:
            return None
        if len(raw) != KEY_LEN:
            return None
        entry = self._cache.get(self._digest(raw))
        if entry is None or not isinstance(entry.value, Verified):
            return None
        expires_at, now = entry.value.principal.expires_at, self._now()
        if not self._cache.is_fresh(entry) or (expires_at is not None and expires_at <= now):
            return None
        return self._from_cache(entry, now)  # counted and recorded as authenticate() does

    def _digest(self, raw: str) -> bytes:
        """The cache's key for a presented key: a keyed hash, so the cache never holds one."""
        return hashlib.blake2b(
            raw.encode("utf-8", "surrogateescape"), key=self._digest_key, digest_size=_DIGEST_SIZE
        ).digest()

    async def _authenticate_with_io(
        self, parsed: ParsedKey, digest: bytes, now: datetime, entry: Entry[Verdict] | None
    ) -> Principal:
        if entry is None:
            entry = await self._after_concurrent_miss(digest)
            if entry is None:
                self._metrics.cache_misses.inc()
                return self._admit(await self._verify_once(parsed, digest, now), now)
        if self._answers_alone(entry):
            return self._from_cache(entry, now)
        self._metrics.cache_stale_hits.inc()
        cached = _verified(entry)
        return self._admit(await self._revalidate(parsed, digest, now, cached), now)

    def _answers_alone(self, entry: Entry[Verdict]) -> bool:
        """A refusal (negative entry) or a fresh positive entry: no database needed."""
        return not isinstance(entry.value, Verified) or self._cache.is_fresh(entry)

    def _from_cache(self, entry: Entry[Verdict], now: datetime) -> Principal:
        """A negative entry's refusal, or a fresh positive entry's Principal."""
        self._metrics.cache_hits.inc()
        verdict = entry.value
        if not isinstance(verdict, Verified):
            raise verdict("refused (cached)")
        return self._admit(verdict.principal, now)

    def _admit(self, principal: Principal, now: datetime) -> Principal:
        if principal.expires_at is not None and principal.expires_at <= now:
            raise ExpiredKey("expired")
        self._usage.record(principal.key_id, now)
        return principal

    async def _after_concurrent_miss(self, digest: bytes) -> Entry[Verdict] | None:
        """If this key is being verified right now, wait for that and use its result.

        Without this, N connections presenting the same new key at once (a client pool
        starting, a cache flush) pay N argon2 verifications instead of one.
        """
        running = self._verifying.get(digest)
        if running is None:
            return None
        await asyncio.shield(running)
        # Once only: if the first verification cached nothing (PostgreSQL down, a revoke
        # racing it), waiting in line again would serialise the failures; verify instead.
        return self._cache.get(digest)

    async def _verify_once(self, parsed: ParsedKey, digest: bytes, now: datetime) -> Principal:
        done = self._verifying[digest] = asyncio.get_running_loop().create_future()
        try:
            return await self._verify(parsed, digest, now, cached=None)
        finally:
            if self._verifying.get(digest) is done:
                del self._verifying[digest]
            done.set_result(None)

    async def _revalidate(
        self, parsed: ParsedKey, digest: bytes, now: datetime, cached: Verified
    ) -> Principal:
        try:
            return await self._verify(parsed, digest, now, cached=cached)
        except StoreUnavailable as exc:
            # The key may have been revoked (or the cache flushed) while PostgreSQL was
            # being asked: only an entry the cache still holds may answer.
            if self._cache.get(digest) is None:
                raise
            log.warning(
                "served_from_cache_during_outage", key_id=cached.principal.key_id, error=str(exc)
            )
            return cached.principal

    async def _verify(
        self, parsed: ParsedKey, digest: bytes, now: datetime, cached: Verified | None
    ) -> Principal:
        generation = self._cache.generation()
        record = await self._store.find_by_lookup_id(parsed.lookup_id)
        try:
            verified = await self._check(record, parsed, now, cached)
        except AuthError as exc:
            self._cache.put(
                digest,
                type(exc),
                key_id=None,
                ttl=self._settings.negative_ttl,
                generation=generation,
            )
            raise
        ttl, grace = self._settings.ttl, self._settings.outage_grace
        expires_at = verified.principal.expires_at
        if expires_at is not None:
            left = (expires_at - now).total_seconds()
            ttl, grace = min(ttl, left), min(grace, left)
        self._cache.put(
            digest,
            verified,
            key_id=verified.principal.key_id,
            ttl=ttl,
            grace=grace,
            generation=generation,
        )
        return verified.principal

    async def _check(
        self, record: KeyRecord | None, parsed: ParsedKey, now: datetime, cached: Verified | None
    ) -> Verified:
        if record is None:
            await self._argon2(self._dummy_hash, parsed.secret)
            raise InvalidKey("unknown key id")
        # The same stored hash already matched this exact key: no need to pay argon2 again.
        if cached is None or cached.hash_fingerprint != self._fingerprint(record.secret_hash):
            if not await self._argon2(record.secret_hash, parsed.secret):
                raise InvalidKey("wrong secret")
        status = record.status(now)
        if status == "revoked":
            raise RevokedKey("revoked")
        if status == "expired":
            raise ExpiredKey("expired")
        if self._hasher.should_rehash(record.secret_hash):
            asyncio.create_task(self._rehash(record, parsed.secret))  # noqa: RUF006
        principal = Principal(
            record.id,
            record.space_id,
            record.prefix,
            record.expires_at,
            record.rate_limit_per_second,
        )
        return Verified(principal, self._fingerprint(record.secret_hash))

    def _fingerprint(self, secret_hash: str) -> bytes:
        return hashlib.blake2b(
            secret_hash.encode("ascii", "replace"),
            key=self._digest_key,
            digest_size=_FINGERPRINT_SIZE,
        ).digest()

    async def _argon2(self, stored: str, secret: str) -> bool:
        if self._pending >= self._max_pending:
            raise Overloaded("argon2 queue full")
        self._pending += 1
        started = time.perf_counter()
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._hasher.verify, stored, secret
            )
        finally:
            self._pending -= 1
        self._metrics.argon2_seconds.observe(time.perf_counter() - started)
        self._metrics.argon2.labels(result="match" if ok else "mismatch").inc()
        return ok

    async def _rehash(self, record: KeyRecord, secret: str) -> None:
        new_hash = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._hasher.hash, secret
        )
        try:
            await self._store.replace_hash(record.id, record.secret_hash, new_hash)
        except StoreUnavailable as exc:
            log.warning("key_rehash_failed", key_id=record.id, error=str(exc))
        else:
            log.info("key_rehashed", key_id=record.id)
