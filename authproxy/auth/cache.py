"""Bounded LRU of verification results with TTLs and revocation-safe inserts; no I/O.

An entry is *fresh* for ``ttl`` seconds; after that, and until ``usable_until``, it is
*stale*: the caller should re-check the database and may fall back to the entry only
when the database is unreachable (the outage grace window).

Entries are keyed by a digest of the presented key (never the key itself). A positive
entry remembers the key id so a revoke can refuse it; a negative entry remembers that a
well-formed key failed, so floods of the same wrong key cost no database query.

Memory (issue 6: 100,000 cached keys in 100 MB for the whole daemon). Each entry is one
bytes record: its times, the generation it was looked up in, its key id and the value
as the caller's codec encodes it. Python objects per entry (an entry object, two floats,
a key-id string, a key-id index) cost more than the data they hold. The entries of keys
used lately are kept decoded (``RECENT``), so a cache hit decodes nothing.

Revocation. ``invalidate_key`` records a tombstone (key id -> generation); there is no
index from key id to entry. ``get`` refuses an entry that was looked up before a later
tombstone of its key id. So a revoke takes effect on the very next request, and the
revoked entry's memory goes when it is next asked for or falls off the LRU.

Revocation race: a lookup that read the database before a revoke must not put the key
back after the revoke. Callers take a ``generation()`` token before they read the
database and hand it to ``put``; the cache refuses inserts older than the last
invalidation of that key id, or than the last full flush or tombstone sweep.
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Generic, NamedTuple, Protocol, TypeVar

V = TypeVar("V")
Clock = Callable[[], float]

# Tombstones kept before a sweep: each is about 150 bytes, and revocations come from
# people, so this many is a bulk revoke. The sweep is one synchronous pass over the cache
# (about 100 ms for 100,000 entries here), once per this many revokes.
_MAX_TOMBSTONES = 10_000
# Decoded entries kept for the keys used lately: the keys in use now, not the whole cache.
RECENT: Final = 4096

# fresh_until, usable_until (the cache's clock), generation, key-id length (_NO_KEY_ID:
# a negative entry; _UUID_KEY_ID: 16 bytes of a UUID); then the key id (UTF-8 or the
# UUID's bytes), then the encoded value.
_HEAD: Final = struct.Struct("<ddqH")
_NO_KEY_ID: Final = 0xFFFF
_UUID_KEY_ID: Final = 0xFFFE


class Codec(Protocol[V]):
    """Turns a cached value into bytes and back; decode gets the entry's key id too."""

    def encode(self, value: V) -> bytes: ...

    def decode(self, key_id: str | None, data: bytes) -> V: ...


class Entry(NamedTuple, Generic[V]):
    value: V
    key_id: str | None
    fresh_until: float  # on the cache's clock: trusted without asking the database
    usable_until: float  # after fresh_until: only when the database cannot be asked
    generation: int  # the token the lookup that stored it took


class VerifiedKeyCache(Generic[V]):
    """LRU + TTL cache; ``max_entries == 0`` disables caching entirely."""

    def __init__(self, *, max_entries: int, codec: Codec[V], clock: Clock = time.monotonic) -> None:
        self._max = max_entries
        self._codec = codec
        self._clock = clock
        self._records: OrderedDict[bytes, bytes] = OrderedDict()  # digest -> record
        self._decoded: dict[bytes, Entry[V]] = {}  # record -> Entry, for RECENT records
        self._generation = 0
        self._refused_before = 0  # puts with an older generation are refused
        self._last_invalidation = 0  # entries at or past this need no tombstone check
        self._tombstones: dict[str, int] = {}  # key id -> generation of its invalidation
        self.hits = self.stale_hits = self.misses = self.evictions = 0
        # metrics hook, called with "capacity" or "revoked" for each entry dropped
        self.on_evict: Callable[[str], None] | None = None

    def __len__(self) -> int:
        return len(self._records)

    @property
    def tombstone_count(self) -> int:
        """Key ids remembered as revoked until the next sweep; never more than 10,000.

        Read-only, for watching the cache's memory (tests, a stats page). Not a count of
        revoked keys: a sweep forgets every tombstone and refuses older inserts instead.
        """
        return len(self._tombstones)

    @property
    def decoded_count(self) -> int:
        """Entries kept decoded for the keys used lately; never more than ``RECENT``.

        Read-only, for watching the cache's memory (tests, a stats page); says nothing
        about hits, which ``hits`` counts.
        """
        return len(self._decoded)

    def generation(self) -> int:
        """Token to pass to ``put``; take it before reading the database."""
        return self._generation

    def get(self, digest: bytes) -> Entry[V] | None:
        """The entry, fresh or stale (see ``is_fresh``), or None."""
        record = self._records.get(digest)
        if record is None:
            self.misses += 1
            return None
        entry = self._decoded.get(record)
        if entry is None:
            entry = self._decode(record)
        now = self._clock()
        if entry.usable_until <= now:
            del self._records[digest]
            self.misses += 1
            return None
        if entry.generation < self._last_invalidation and self._revoked(
            entry.key_id, entry.generation
        ):
            del self._records[digest]
            self._evicted("revoked")
            self.misses += 1
            return None
        self._records.move_to_end(digest)
        if entry.fresh_until > now:
            self.hits += 1
        else:
            self.stale_hits += 1
        return entry

    def is_fresh(self, entry: Entry[V]) -> bool:
        return entry.fresh_until > self._clock()

    def put(
        self,
        digest: bytes,
        value: V,
        *,
        key_id: str | None,
        ttl: float,
        generation: int,
        grace: float = 0.0,
    ) -> bool:
        """Insert unless the key was invalidated after ``generation``; return whether stored.

        ``grace`` (>= ttl to matter) is how long the entry stays usable as a fallback.
        """
        if self._max == 0 or ttl <= 0 or generation < self._refused_before:
            return False
        if key_id is not None and self._tombstones.get(key_id, -1) > generation:
            return False
        now = self._clock()
        fresh_until, usable_until = now + ttl, now + max(ttl, grace)
        if key_id is None:
            head = _HEAD.pack(fresh_until, usable_until, generation, _NO_KEY_ID)
        elif (as_uuid := _uuid_bytes(key_id)) is not None:
            head = _HEAD.pack(fresh_until, usable_until, generation, _UUID_KEY_ID) + as_uuid
        else:
            encoded_id = key_id.encode("utf-8", "surrogateescape")
            if len(encoded_id) >= _UUID_KEY_ID:
                raise ValueError("key id too long to cache")
            head = _HEAD.pack(fresh_until, usable_until, generation, len(encoded_id)) + encoded_id
        self._records.pop(digest, None)  # a replaced entry becomes the most recent
        self._records[digest] = head + self._codec.encode(value)
        while len(self._records) > self._max:
            self._records.popitem(last=False)
            self._evicted("capacity")
        return True

    def invalidate_key(self, key_id: str) -> None:
        """Refuse the key's cached entries from now on, and in-flight re-inserts of it."""
        self._generation += 1
        self._last_invalidation = self._generation
        self._tombstones[key_id] = self._generation
        if len(self._tombstones) > _MAX_TOMBSTONES:
            self._sweep()

    def clear(self) -> None:
        """Forget everything, and refuse every insert started before now."""
        self._generation += 1
        self._refused_before = self._generation
        self._tombstones.clear()
        self._records.clear()
        self._decoded.clear()

    def _revoked(self, key_id: str | None, generation: int) -> bool:
        """Whether the key of an entry looked up in ``generation`` was invalidated since."""
        return key_id is not None and self._tombstones.get(key_id, -1) > generation

    def _sweep(self) -> None:
        """Drop every revoked entry, then the tombstones: one pass per _MAX_TOMBSTONES
        revocations, instead of an index from key id to entry for every cached key.

        In-flight lookups still need the tombstones to be refused; they are refused
        wholesale instead (their keys are verified again next time).
        """
        for digest, record in list(self._records.items()):
            _, _, generation, id_len = _HEAD.unpack_from(record)
            if self._revoked(_key_id(record, id_len)[0], generation):
                del self._records[digest]
                self._evicted("revoked")
        self._tombstones.clear()
        self._refused_before = self._generation

    def _decode(self, record: bytes) -> Entry[V]:
        fresh_until, usable_until, generation, id_len = _HEAD.unpack_from(record)
        key_id, value_at = _key_id(record, id_len)
        entry = Entry(
            self._codec.decode(key_id, record[value_at:]),
            key_id,
            fresh_until,
            usable_until,
            generation,
        )
        if len(self._decoded) >= RECENT:
            self._decoded.clear()
        self._decoded[record] = entry
        return entry

    def _evicted(self, reason: str) -> None:
        self.evictions += 1
        if self.on_evict is not None:
            self.on_evict(reason)


def _key_id(record: bytes, id_len: int) -> tuple[str | None, int]:
    """A record's key id (``id_len`` from its head) and where its encoded value starts."""
    if id_len == _NO_KEY_ID:
        return None, _HEAD.size
    if id_len == _UUID_KEY_ID:
        end = _HEAD.size + 16
        return _uuid_text(record[_HEAD.size : end]), end
    end = _HEAD.size + id_len
    return record[_HEAD.size : end].decode("utf-8", "surrogateescape"), end


def _uuid_bytes(key_id: str) -> bytes | None:
    """The 16 bytes of a key id written as PostgreSQL writes a uuid, else None.

    Key ids are uuids: as 16 bytes instead of 36 characters, a cached entry's record fits
    CPython's 128-byte size class instead of the 160-byte one.
    """
    if len(key_id) != 36:
        return None
    try:
        raw = bytes.fromhex(key_id.replace("-", ""))
    except ValueError:
        return None
    # Only the canonical text (lowercase, dashes in place) comes back from _uuid_text.
    return raw if _uuid_text(raw) == key_id else None


def _uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
